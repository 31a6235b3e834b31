# pack -> train_bootstrap -> features -> clean -> pack_clean (-> train, in train.smk).
# The bootstrap's checkpoint folder, like train's, is not an output: a job started again after a
# crash resumes from it. Features run one job per set (features.sets): the raw pack and every
# evaluation set the overlap rule compares with.
FEATURES = config["features"]["out_dir"]


rule train_bootstrap:
    input:
        script="scripts/train_bootstrap.py",
        code=stage_code("train_bootstrap"),
        sections=section_input("train_bootstrap"),
        pack=config["train_bootstrap"]["pack_dir"],
        evalpack=config["evalpack"]["out_dir"],
    output:
        model=directory(config["train_bootstrap"]["out_dir"]),
        metrics=f"{config['train_bootstrap']['live_dir']}/metrics.json",
        plots=directory(f"{config['train_bootstrap']['live_dir']}/plots/metrics"),
    params:
        train_bootstrap=config["train_bootstrap"],
        launcher=train_launcher("train_bootstrap"),
    threads: max(1, config["train_bootstrap"]["workers"])
    resources:
        **train_resources("train_bootstrap"),
    log:
        "logs/snakemake/train_bootstrap.log",
    shell:
        "{params.launcher}{PY} scripts/train_bootstrap.py --params {PARAMS_FILE} > {log} 2>&1"


def _feature_source(wildcards):
    """The set's files as the DAG makes them: an aligned set's rec, idx and manifest (the align
    rule's outputs; its folder is not one), a pack's folder."""
    src = config["features"]["sets"][wildcards.dataset]
    path = str(src["source"]).rstrip("/")
    align = ALIGN.rstrip("/")
    if src["format"] == "aligned" and path.startswith(align + "/"):
        return [f"{path}/{f}" for f in ("faces.rec", "faces.idx", "manifest.parquet")]
    return [in_dag(path)]


def _feature_model(wildcards):
    """The folder of the model features.model names when a DAG stage makes it (the bootstrap's)."""
    path = str((config["features"].get("model") or {}).get("path") or "")
    boot = config["train_bootstrap"]["out_dir"].rstrip("/")
    return [boot] if path.startswith(boot + "/") else ([path] if path else [])


rule features:
    input:
        script="scripts/features.py",
        code=stage_code("features"),
        sections=section_input("features"),
        source=_feature_source,
        model=_feature_model,
    output:
        directory(f"{FEATURES}/{{dataset}}"),
    params:
        features=config["features"],
    threads: config["features"]["workers"]
    log:
        "logs/snakemake/features_{dataset}.log",
    shell:
        "{PY} scripts/features.py --params {PARAMS_FILE} --dataset {wildcards.dataset} "
        "--workers {threads} > {log} 2>&1"


rule clean:
    input:
        script="scripts/clean.py",
        code=stage_code("clean"),
        sections=section_input("clean"),
        features=config["clean"]["features_dir"],
        eval_features=sorted(set(config["clean"].get("eval_features", {}).values())),
        bootstrap=config["clean"]["bootstrap_dir"],
        pack=config["clean"]["pack_dir"],
        detect=f"{DETECT}/{config['pack']['dataset']}/manifest.parquet",
        align=f"{ALIGN}/{config['pack']['dataset']}/manifest.parquet",
        truth=[in_dag(config["clean"]["ground_truth"])] if config["clean"].get("ground_truth") else [],
    output:
        out=directory(config["clean"]["out_dir"]),
        metrics=config["clean"]["metrics"],
    params:
        clean=config["clean"],
    log:
        "logs/snakemake/clean.log",
    shell:
        "{PY} scripts/clean.py --params {PARAMS_FILE} > {log} 2>&1"


rule pack_clean:
    input:
        script="scripts/pack_clean.py",
        code=stage_code("pack_clean"),
        sections=section_input("pack_clean"),
        pack=config["pack_clean"]["pack_dir"],
        clean=config["pack_clean"]["clean_dir"],
    output:
        directory(config["pack_clean"]["out_dir"]),
    params:
        pack_clean=config["pack_clean"],
    log:
        "logs/snakemake/pack_clean.log",
    shell:
        "{PY} scripts/pack_clean.py --params {PARAMS_FILE} > {log} 2>&1"
