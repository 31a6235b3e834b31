# evaluate -> report (the model comes from the train rule; train_bootstrap -> clean -> pack_clean come next).


rule evaluate:
    input:
        script="scripts/evaluate.py",
        code=stage_code("evaluate"),
        evalpack=config["evalpack"]["out_dir"],
        model=config["train"]["out_dir"],
        aligned=expand(f"{ALIGN}/{{dataset}}/manifest.parquet", dataset=DATASETS),
        benchmarks=sorted({in_dag(p) for p in (
            *[(s or {}).get("root") for s in (config["evaluate"].get("ijb") or {}).values()],
            (config["evaluate"].get("megaface") or {}).get("facescrub_noises"),
            (config["evaluate"].get("megaface") or {}).get("megaface_noises"),
        ) if p}),
    output:
        metrics=directory(config["evaluate"]["metrics_dir"]),
        plots=directory(config["evaluate"]["plots_dir"]),
        embeddings=directory(config["evaluate"]["embeddings_dir"]),
    params:
        evaluate=config["evaluate"],
    log:
        "logs/snakemake/evaluate.log",
    shell:
        "{PY} scripts/evaluate.py --params {PARAMS_FILE} > {log} 2>&1"


rule report:
    input:
        script="scripts/report.py",
        code=stage_code("report"),
        metrics=config["evaluate"]["metrics_dir"],
    output:
        directory(config["report"]["out_dir"]),
    params:
        report=config["report"],
        metrics_dir=config["evaluate"]["metrics_dir"],
    log:
        "logs/snakemake/report.log",
    shell:
        "{PY} scripts/report.py --params {PARAMS_FILE} > {log} 2>&1"
