# One tuning job per dataset × loss: every loss gets the same number of trials, trained on
# training cells and scored on validation cells. The cross-validation variant "<name>.mcv"
# trains with its dataset's tuned settings (same cells, same split; tuning it again would
# double the budget for no new question). Tuning runs at the reference rank and every rank
# reuses its choice (see the tuning section of the README for which way that biases).
rule tune:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        trials="results/{dataset}/tuning/{loss}/trials.tsv",
        best="results/{dataset}/tuning/{loss}/best.yaml",
        # the winning trial, which the training job of the same seed and rank resumes
        best_run="results/{dataset}/tuning/{loss}/best_run.pt",
    log:
        "logs/{dataset}/tune/{loss}.log",
    benchmark:
        "benchmarks/{dataset}/tune/{loss}.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/torch.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=mem_mb_from_input(1500, 8),
        runtime=minutes_per_attempt(120),
    params:
        loss_params=loss_params,
        model=model_at_rank,  # at the reference rank
        train=config["train"],
        tune=config["tune"],
        label_key=label_key,
    script:
        "../scripts/tune.py"


rule plot_tuning:
    input:
        trials=tuning_outcomes("trials.tsv"),
    output:
        figure=in_report("plots/tuning.png", "Training"),
    log:
        "logs/{dataset}/plot_tuning.log",
    benchmark:
        "benchmarks/{dataset}/plot_tuning.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        criterion=config["tune"]["criterion"],
    script:
        "../scripts/plot_tuning.py"
