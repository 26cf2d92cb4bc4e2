"""Rule probe: linear probing of one feature extractor on one dataset (per-voxel test r)."""

from afo.jobs import run_job


def main(smk):
    from afo.data.overlap import left_out_by_dataset
    from afo.io.tables import write_csv
    from afo.probing.benchmark import ExtractorSpec, ProbeSettings, probe_dataset
    from afo.runtime import resolve_device

    compute = smk.config["compute"]
    dataset = smk.wildcards.dataset
    spec = ExtractorSpec.from_config(smk.wildcards.extractor, smk.params.spec)
    settings = ProbeSettings.from_config({**smk.params.settings, "batch_size": compute["feature_batch_size"]})
    leave_out = left_out_by_dataset(smk.input.overlap, [dataset], smk.params.trained_on).get(dataset)
    table = probe_dataset(
        spec,
        dataset,
        smk.input.store,
        settings,
        role=smk.params.role,
        features_path=(smk.input.features or [None])[0],
        model_path=(smk.input.model or [None])[0],
        roi_set=smk.params.roi_set,
        device=resolve_device(compute["device"]),
        leave_out=leave_out,
        backbone=dict(smk.params.backbone) or None,
    )
    write_csv(table, smk.output[0])
    return {
        "voxels": len(table),
        "median_r_test": float(table["r_test"].median()),
        "test_images_left_out": int(table["n_test_left_out"].max()) if len(table) else 0,
    }


run_job(snakemake, lambda: main(snakemake))
