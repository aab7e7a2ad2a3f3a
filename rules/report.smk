rule plots:
    input:
        tidy="results/{dataset}/metrics.tsv",
        per_cell=per_cell_files,
        histories=lambda wildcards: [
            f"results/{wildcards.dataset}/models/{loss}/seed{seed}/history.tsv"
            for loss in LOSS_NAMES
            for seed in config["seeds"]
        ],
    output:
        cosine=report(
            "results/{dataset}/plots/cosine_distributions.png",
            caption="../report/cosine_distributions.rst",
            category="{dataset}",
            subcategory="Reconstruction",
        ),
        heatmap=report(
            "results/{dataset}/plots/metric_heatmap.png",
            caption="../report/metric_heatmap.rst",
            category="{dataset}",
            subcategory="Reconstruction",
        ),
        curves=report(
            "results/{dataset}/plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="{dataset}",
            subcategory="Training",
        ),
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
    script:
        "../scripts/plots.py"


# Apart from the other figures: it needs only the first seed's embeddings, so it runs while
# the remaining seeds still train and evaluate instead of last and alone.
rule plot_umap:
    input:
        embeddings=lambda wildcards: [
            f"results/{wildcards.dataset}/embeddings/{loss}/seed{config['seeds'][0]}.h5ad"
            for loss in LOSS_NAMES
        ]
        + [f"results/{wildcards.dataset}/embeddings/baseline/pca.h5ad"],
    output:
        umap=report(
            "results/{dataset}/plots/umap.png",
            caption="../report/umap.rst",
            category="{dataset}",
            subcategory="Embeddings",
        ),
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
        label_key=lambda wildcards: dataset_config(wildcards)["label_key"],
    script:
        "../scripts/plot_umap.py"
