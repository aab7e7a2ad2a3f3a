rule embed:
    input:
        model="results/{dataset}/models/{loss}/seed{seed}/model.pt",
        data="results/{dataset}/preprocessed.h5ad",
    output:
        embedding="results/{dataset}/embeddings/{loss}/seed{seed}.h5ad",
        reconstruction="results/{dataset}/reconstructions/{loss}/seed{seed}.h5ad",
    log:
        "logs/{dataset}/embed/{loss}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/embed/{loss}/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 8),
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        input_scaling=config["model"]["input_scaling"],
        device=config["train"]["device"],
    script:
        "../scripts/embed.py"


rule baseline:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        embedding="results/{dataset}/embeddings/baseline/{baseline}.h5ad",
        reconstruction="results/{dataset}/reconstructions/baseline/{baseline}.h5ad",
    log:
        "logs/{dataset}/baseline/{baseline}.log",
    benchmark:
        "benchmarks/{dataset}/baseline/{baseline}.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 8),
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        n_components=config["model"]["latent_dim"],
        seed=config["preprocess"]["split_seed"],
    script:
        "../scripts/baseline.py"
