"""Rule simulate: write the synthetic retinotopic brain (folder datasets) into resources/synthetic."""

from afo.jobs import run_job


def main(smk):
    from afo.simulate import SimulationConfig, simulate

    return simulate(smk.output[0], SimulationConfig.from_dict({**smk.params.options, "seed": smk.params.seed}))


run_job(snakemake, lambda: main(snakemake))
