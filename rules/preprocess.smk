rule preprocess:
    input:
        input_path,
    output:
        "results/{dataset}/preprocessed.h5ad",
    log:
        "logs/{dataset}/preprocess.log",
    benchmark:
        "benchmarks/{dataset}/preprocess.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=preprocess_mem_mb,
        runtime=minutes_per_attempt(30),
    params:
        dataset=dataset_config,
        preprocess=preprocess_config,
        mcv=mcv_settings,
        clusters=CLUSTERS,
        needs=NEEDS,
        require_integers=needs_integer_counts,
    script:
        "../scripts/preprocess.py"
