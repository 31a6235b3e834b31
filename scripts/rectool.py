"""RecordIO pack tools: verify, rebuild-idx, unpack, stats, list.

  python scripts/rectool.py verify data/pack/train.rec          # every bad record, idx entry, range
  python scripts/rectool.py rebuild-idx data/pack/train.rec     # fresh train.idx from the .rec
  python scripts/rectool.py unpack data/pack/train.rec out/     # out/<label>/<key>.jpg
  python scripts/rectool.py stats data/pack/train.rec
  python scripts/rectool.py list data/pack/train.rec --limit 20
Exit codes: 0 fine, 1 verify found problems, 2 bad input (one line naming the file).
"""
import argparse
import json
import sys

from arcpipe.errors import PipelineError
from arcpipe import rectools


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/rectool.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="walk a .rec and check every record, idx offset, identity range")
    v.add_argument("rec")
    v.add_argument("--idx")
    v.add_argument("--property")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    r = sub.add_parser("rebuild-idx", help="write a fresh .idx from the .rec")
    r.add_argument("rec")
    r.add_argument("--idx", help="output path (default: <rec>.idx)")
    r.add_argument("--keys", choices=["position", "id"], default="position",
                   help="position: 0..n-1 in file order (insightface packs); id: IRHeader id (im2rec)")
    u = sub.add_parser("unpack", help="image records -> OUT/<label>/<key>.jpg")
    u.add_argument("rec")
    u.add_argument("out")
    u.add_argument("--idx")
    s = sub.add_parser("stats", help="counts, classes, images per class")
    s.add_argument("rec")
    s.add_argument("--idx")
    ls = sub.add_parser("list", help="one line per record: key offset flag label id id2 bytes")
    ls.add_argument("rec")
    ls.add_argument("--idx")
    ls.add_argument("--limit", type=int)
    a = p.parse_args(argv)
    try:
        if a.cmd == "verify":
            rep = rectools.verify(a.rec, a.idx, a.property)
            if a.json:
                print(json.dumps(rep.as_dict(), indent=2))
            else:
                for line in rep.problems:
                    print(line)
                print(f"{a.rec}: {rep.records} records ({rep.layout}: {rep.images} images, {rep.identities} "
                      f"identities, {rep.split_records} split), {len(rep.problems)} problem(s)")
            return 0 if rep.ok else 1
        if a.cmd == "rebuild-idx":
            n = rectools.rebuild_idx(a.rec, a.idx, a.keys)
            print(f"{a.idx or a.rec.rsplit('.', 1)[0] + '.idx'}: {n} entries")
        elif a.cmd == "unpack":
            print(json.dumps(rectools.unpack_tree(a.rec, a.out, a.idx)))
        elif a.cmd == "stats":
            print(json.dumps(rectools.stats(a.rec, a.idx), indent=2))
        elif a.cmd == "list":
            for item in rectools.list_records(a.rec, a.idx, a.limit):
                print("\t".join(str(item[c]) for c in ("key", "offset", "flag", "label", "id", "id2", "payload_bytes")))
    except PipelineError as e:
        print(f"rectool: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `| head`
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
