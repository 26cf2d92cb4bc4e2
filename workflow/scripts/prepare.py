"""Rule prepare: read one dataset as downloaded and write its prepared store."""

from afo.jobs import run_job


def main(smk):
    from afo.data.registry import get_adapter

    ds = smk.params.dataset
    adapter = get_adapter(ds["format"])
    return adapter.prepare(ds["root"], smk.output[0], image_size=smk.params.image_size, options=ds["options"])


run_job(snakemake, lambda: main(snakemake))
