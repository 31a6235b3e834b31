# The paths and input functions that the rules share (Snakemake's advice: rules in their own
# files, the functions here). Folders come from params, so a variant that moves an output moves its readers.

DOWNLOAD = config["download"]["out_dir"]
DETECT = config["detect"]["out_dir"]
ALIGN = config["align"]["out_dir"]
FEATURES = config["features"]["out_dir"]


def in_dag(path):
    """A raw input path; inside the sample's folder it is the sample rule's output."""
    path = str(path).rstrip("/")
    sample = config["sample"]["out_dir"].rstrip("/")
    return sample if path == sample or path.startswith(f"{sample}/") else path


def source_of(dataset):
    return in_dag(config["detect"]["datasets"][dataset]["source"])


def _parts(stage_dir, shards):
    def parts(wildcards):
        if shards <= 1:
            return []
        return [f"{stage_dir}/{wildcards.dataset}/parts/part-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]

    return parts


def _listing(shards):
    """Sharded: the merge job starts from the listing the detect_list job wrote (unsharded, the
    detect job lists the source itself)."""
    return (lambda w: [f"{DETECT}/{w.dataset}/listing.parquet"]) if shards > 1 else []


def sample_photos(wildcards):
    """The download stage's photo folders when params list them (else the sample reads the wheels)."""
    listed = config["download"].get("datasets") or {}
    return [f"{DOWNLOAD}/{name}" for name in SAMPLE_PHOTOS if name in listed]


def _feature_source(wildcards):
    """The set's files as the DAG makes them: an aligned set's rec, idx and manifest (the align
    rule's outputs; its folder is not one), a pack's folder."""
    src = config["features"]["sets"][wildcards.dataset]
    path = str(src["source"]).rstrip("/")
    align = ALIGN.rstrip("/")
    if src["format"] == "aligned" and path.startswith(f"{align}/"):
        return [f"{path}/{f}" for f in ("faces.rec", "faces.idx", "manifest.parquet")]
    return [in_dag(path)]


def _feature_model(wildcards):
    """The folder of the model features.model names when a DAG stage makes it (the bootstrap's)."""
    path = str((config["features"].get("model") or {}).get("path") or "")
    boot = config["train_bootstrap"]["out_dir"].rstrip("/")
    return [boot] if path.startswith(f"{boot}/") else ([path] if path else [])


def evaluated_model_dirs():
    """The DAG's model folders (train's, train_bootstrap's) that evaluate.model or a baseline names."""
    ev = config["evaluate"]
    paths = [str((m or {}).get("path") or "") for m in [ev.get("model"), *(ev.get("baselines") or {}).values()]]
    dirs = [config["train"]["out_dir"], config["train_bootstrap"]["out_dir"]]
    dirs = [d.rstrip("/") for d in dirs]
    return [d for d in dirs if any(p.startswith(f"{d}/") for p in paths)]
