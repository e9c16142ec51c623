"""The installer's hands: pack a wheel from installed files, turn pip --target's output into the
one directory the switch imports, swap it in, write the manifest, remove what a manifest lists.
Each function does one thing to the file system; install_plan.py decides, installer.py calls."""
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import zipfile

from . import install_plan as P


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack_wheel(site, files, wheel, keep_ext=()):
    """Write `wheel` (its name says the tag) from `files` (relative to `site`, as RECORD lists
    them): compiled modules only if in `keep_ext`; a fresh WHEEL and RECORD."""
    tag = os.path.basename(wheel)[:-len(".whl")].split("-", 2)[2]
    info = next(f.split("/", 1)[0] for f in files if ".dist-info/" in f)
    os.makedirs(os.path.dirname(wheel), exist_ok=True)
    rows = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in files:
            if rel.endswith(".so") and rel not in keep_ext or rel in (info + "/WHEEL", info + "/RECORD"):
                continue
            with open(os.path.join(site, rel), "rb") as f:
                data = f.read()
            z.write(os.path.join(site, rel), rel)
            rows.append((rel, _record_hash(data), str(len(data))))
        meta = ("Wheel-Version: 1.0\nGenerator: %s\nRoot-Is-Purelib: %s\nTag: %s\n" % (
            P.INSTALLED_BY, "true" if tag == "py3-none-any" else "false", tag)).encode()
        z.writestr(info + "/WHEEL", meta)
        rows.append((info + "/WHEEL", _record_hash(meta), str(len(meta))))
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows + [(info + "/RECORD", "", "")])
        z.writestr(info + "/RECORD", out.getvalue())
    return wheel


def fresh_staging(staging):
    """An empty staging dir (a crashed run's leftovers go first: the name is the installer's)."""
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)


def arrange(target):
    """pip --target's output in `target` → the package dir with the dependencies in _deps and
    without what the switch does not need. Returns the package dir."""
    pkg = os.path.join(target, P.PACKAGE)
    if not os.path.isfile(os.path.join(pkg, "__init__.py")):
        raise RuntimeError("pip did not install the package %s into %s" % (P.PACKAGE, target))
    deps = os.path.join(pkg, P.DEPS_DIR)
    os.mkdir(deps)
    for name in sorted(os.listdir(target)):
        path = os.path.join(target, name)
        if name == P.PACKAGE:
            continue
        if name in P.LEFT_OUT:
            shutil.rmtree(path)
        else:
            os.rename(path, os.path.join(deps, name))
    for name in P.LEFT_OUT_PACKAGE:
        shutil.rmtree(os.path.join(pkg, name), ignore_errors=True)
    return pkg


def swap(new_pkg, final, staging):
    """Put `new_pkg` at `final`; the old directory (if any) goes into `staging`, to be removed
    with it. Back as it was if the second rename fails."""
    aside = os.path.join(staging, "previous")
    had_old = os.path.lexists(final)
    if had_old:
        os.rename(final, aside)
    try:
        os.rename(new_pkg, final)
    except OSError:
        if had_old:
            os.rename(aside, final)
        raise


def write_manifest(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_file(path, content):
    """Write `path` whole (a temporary file renamed over it). Returns the directories it made."""
    made, d = [], os.path.dirname(path)
    while d and not os.path.isdir(d):
        made.append(d)
        d = os.path.dirname(d)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp-audio-stream"
    with open(tmp, "wb") as f:
        f.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return made


def remove_tree(root, files):
    """Remove `files` (relative to `root`), then the directories they leave empty, `root`
    included. Anything else stays. Returns how many files were removed."""
    n = 0
    for rel in files:
        path = os.path.join(root, rel)
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
            n += 1
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    return n


def file_sha256(path):
    try:
        with open(path, "rb") as f:
            return P.sha256(f.read())
    except OSError:
        return None
