rule plots:
    input:
        tidy="results/{dataset}/metrics.tsv",
        per_cell=reference_per_cell_files,
        histories=reference_history_files,
    output:
        cosine=in_report("plots/cosine_distributions.png", "Reconstruction"),
        heatmap=in_report("plots/metric_heatmap.png", "Reconstruction"),
        curves=in_report("plots/training_curves.png", "Training"),
    log:
        "logs/{dataset}/plots.log",
    benchmark:
        "benchmarks/{dataset}/plots.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(2000, 2),
        runtime=20,
    params:
        rank=REFERENCE_RANK,
    script:
        "../scripts/plots.py"


# Apart from the other figures: it needs only the first seed's embeddings, so it runs while
# the remaining seeds still train and evaluate instead of last and alone.
rule plot_umap:
    input:
        embeddings=umap_embeddings,
    output:
        umap=in_report("plots/umap.png", "Embeddings"),
    log:
        "logs/{dataset}/plot_umap.log",
    benchmark:
        "benchmarks/{dataset}/plot_umap.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(2000, 4),
        runtime=30,
    params:
        label_key=label_key,
    script:
        "../scripts/plot_umap.py"


# The two figures a reader looks at first: the primary metric against the rank, and the
# answer's paired differences at each rank.
rule plot_ranks:
    input:
        tidy="results/{dataset}/metrics.tsv",
        ranks="results/{dataset}/ranks.tsv",
        comparisons="results/{dataset}/comparisons.tsv",
    output:
        curve=in_report("plots/rank_curve.png", "Answer"),
        forest=in_report("plots/forest.png", "Answer"),
    log:
        "logs/{dataset}/plot_ranks.log",
    benchmark:
        "benchmarks/{dataset}/plot_ranks.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        primary_metric=config["summary"]["primary_metric"],
    script:
        "../scripts/plot_ranks.py"
