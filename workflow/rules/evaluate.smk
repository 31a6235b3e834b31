# evaluate -> report (the model comes from the train rule, the raw-set baseline from train_bootstrap).


rule evaluate:
    input:
        script="scripts/evaluate.py",
        code=stage_code("evaluate"),
        sections=section_input("evaluate"),
        evalpack=config["evalpack"]["out_dir"],
        models=evaluated_model_dirs(),
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
        "$ARCPIPE_PYTHON scripts/evaluate.py --params $ARCPIPE_PARAMS > {log} 2>&1"


rule report:
    input:
        script="scripts/report.py",
        code=stage_code("report"),
        sections=section_input("report"),
        metrics=config["evaluate"]["metrics_dir"],
        plots=config["evaluate"]["plots_dir"],
        training=[f"{config[s]['live_dir']}/plots/metrics" for s in ("train", "train_bootstrap")],
        live=[f"{config[s]['live_dir']}/metrics.json" for s in ("train", "train_bootstrap")],
        sheets=expand(f"{ALIGN}/{{dataset}}/contact_sheet.jpg", dataset=DATASETS),
        clean_metrics=config["clean"]["metrics"],
        clean=config["clean"]["out_dir"],
    output:
        directory(config["report"]["out_dir"]),
    params:
        report=config["report"],
        # the values report's dvc.yaml entry tracks, taken from the inputs they name
        metrics_dir=lambda w, input: input.metrics,
        plots_dir=lambda w, input: input.plots,
        live_dirs=[config["train"]["live_dir"], config["train_bootstrap"]["live_dir"]],
        align_dir=lambda w: config["align"]["out_dir"],
        datasets=config["detect"]["datasets"],
        clean=[config["clean"]["metrics"], config["clean"]["out_dir"]],
    log:
        "logs/snakemake/report.log",
    shell:
        "$ARCPIPE_PYTHON scripts/report.py --params $ARCPIPE_PARAMS > {log} 2>&1"
