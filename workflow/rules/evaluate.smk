# evaluate -> report (the model comes from the train rule, the raw-set baseline from train_bootstrap).


def evaluated_model_dirs():
    """The DAG's model folders (train's, train_bootstrap's) that evaluate.model or a baseline names."""
    ev = config["evaluate"]
    paths = [str((m or {}).get("path") or "") for m in [ev.get("model"), *(ev.get("baselines") or {}).values()]]
    dirs = [config[s]["out_dir"].rstrip("/") for s in ("train", "train_bootstrap")]
    return [d for d in dirs if any(p.startswith(d + "/") for p in paths)]


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
        "{PY} scripts/evaluate.py --params {PARAMS_FILE} > {log} 2>&1"


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
        metrics_dir=config["evaluate"]["metrics_dir"],
        plots_dir=config["evaluate"]["plots_dir"],
        live_dirs=[config["train"]["live_dir"], config["train_bootstrap"]["live_dir"]],
        align_dir=config["align"]["out_dir"],
        datasets=config["detect"]["datasets"],
        clean=[config["clean"]["metrics"], config["clean"]["out_dir"]],
    log:
        "logs/snakemake/report.log",
    shell:
        "{PY} scripts/report.py --params {PARAMS_FILE} > {log} 2>&1"
