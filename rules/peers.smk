# The field's own models (config peers: scvi, ldvae), one job per dataset × rank × peer ×
# seed in their own env (scvi-tools' dependencies stay out of the training env), scored by
# the same script as every other run. A dataset's MCV variant has no peers.
if PEERS:

    rule peer:
        input:
            "results/{dataset}/preprocessed.h5ad",
        output:
            embedding="results/{dataset}/k{rank}/embeddings/{peer}/seed{seed}.h5ad",
            reconstruction="results/{dataset}/k{rank}/reconstructions/{peer}/seed{seed}.h5ad",
            history="results/{dataset}/k{rank}/models/{peer}/seed{seed}/history.tsv",
        log:
            "logs/{dataset}/k{rank}/peer/{peer}/seed{seed}.log",
        benchmark:
            "benchmarks/{dataset}/k{rank}/peer/{peer}/seed{seed}.tsv"
        wildcard_constraints:
            dataset=alternatives(DATASETS),
        conda:
            "../envs/scvi.yaml"
        threads: config["train"]["threads"]
        resources:
            mem_mb=mem_mb_from_input(2500, 6),
            runtime=minutes_per_attempt(60),
        params:
            settings=config["peer_train"],
            device=config["train"]["device"],
        script:
            "../scripts/peer.py"

    rule evaluate_peer:
        input:
            data="results/{dataset}/preprocessed.h5ad",
            embeddings=["results/{dataset}/k{rank}/embeddings/{peer}/seed{seed}.h5ad"],
            reconstructions=[
                "results/{dataset}/k{rank}/reconstructions/{peer}/seed{seed}.h5ad"
            ],
        output:
            metrics=["results/{dataset}/k{rank}/metrics/{peer}/seed{seed}.tsv"],
            per_cell=[
                "results/{dataset}/k{rank}/metrics/{peer}/seed{seed}.per_cell.tsv.gz"
            ],
        log:
            "logs/{dataset}/k{rank}/evaluate/{peer}/seed{seed}.log",
        benchmark:
            "benchmarks/{dataset}/k{rank}/evaluate/{peer}/seed{seed}.tsv"
        wildcard_constraints:
            dataset=alternatives(DATASETS),
        conda:
            "../envs/scanpy.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_from_input(1500, 4),
            runtime=minutes_per_attempt(10),
        params:
            label_key=label_key,
            rank=wildcard_number("rank"),
            seed=wildcard_number("seed"),
        script:
            "../scripts/evaluate.py"
