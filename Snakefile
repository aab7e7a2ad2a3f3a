# scae: train one autoencoder per loss × rank × seed on real single-cell data and measure
# which loss reconstructs cells best, and at which rank it beats PCA at that rank.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/preprocess.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/baselines.smk"
include: "rules/peers.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        expand("results/{dataset}/summary.tsv", dataset=DATASETS),
        expand(
            "results/{dataset}/plots/{figure}.png",
            dataset=DATASETS,
            figure=["rank_curve", "forest", "metric_heatmap", "umap"]
            + (["tuning"] if TUNE else []),
        ),
