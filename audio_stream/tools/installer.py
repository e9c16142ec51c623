"""audio-stream-install: install audio_stream where FreeSWITCH's mod_python3 imports it, or remove it.

    audio-stream-install --dry-run      # what it finds and would do; changes nothing
    audio-stream-install                # do it
    audio-stream-install --uninstall    # remove exactly what it installed (--dry-run: show it)

It finds FreeSWITCH (fs_cli on PATH or under a well-known prefix, else the event socket on
127.0.0.1:8021; or --prefix, --fs-cli, --esl/--password) and asks it for its script, conf and
module dirs (global_getvar script_dir, conf_dir, mod_dir); without an answer it guesses them
from the layout. It finds the Python mod_python3 embeds from the libpython that
mod_python3.so links (ldd), and installs the package and its dependencies with that Python's
pip into ONE directory, <script_dir>/audio_stream: the package, its dependencies in
audio_stream/_deps (the package puts them on its import path) and install-manifest.json, the
list of every file it added. What it installs is the audio_stream it runs from: the checkout
it was installed from when that is unchanged, else its installed files (or --source). It
installs the conf samples without replacing any file (a .dist copy beside yours instead),
checks that mod_python3 is loaded and that `python audio_stream` answers, and says exactly
what is left to do. An upgrade replaces the directory; --uninstall removes the files the
manifest lists (and the conf files it wrote, unless you changed them) and nothing else.

Exit status: 0 when done (or, with --dry-run, when nothing blocks it), 1 when something
blocks it or the switch does not answer yet, 2 for a bad option.
"""
import os
import shutil
import subprocess

from . import cli, esl, install_files as F, install_plan as P, install_probe

PROG = "audio-stream-install"


def parser(prog=PROG):
    p = cli.parser(prog, __doc__)
    p.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("--uninstall", action="store_true",
                   help="remove what this installer installed (the files its manifest lists)")
    g = p.add_argument_group("finding FreeSWITCH")
    g.add_argument("--prefix", help="where FreeSWITCH is installed (e.g. /usr/local/freeswitch, or /usr "
                   "for Debian's packages)")
    g.add_argument("--fs-cli", help="the fs_cli to ask the switch with")
    g.add_argument("--esl", type=cli.host_port(esl.DEFAULT_PORT), metavar="HOST:PORT",
                   help="ask the switch over its event socket instead of fs_cli")
    g.add_argument("--password", help="the event socket's password (fs_cli: its own configuration; "
                   "--esl: default ClueCon)")
    g.add_argument("--script-dir", help="mod_python3's import dir (default: the switch's script_dir)")
    g.add_argument("--conf-dir", help="FreeSWITCH's conf dir (default: the switch's conf_dir)")
    g.add_argument("--mod-dir", help="where mod_python3.so is (default: the switch's mod_dir)")
    g.add_argument("--python", help="the Python mod_python3 embeds (default: found from mod_python3.so's libpython)")
    g = p.add_argument_group("what to install")
    g.add_argument("--method", choices=("auto", "target", "site", "none"), default="auto",
                   help="target (what auto does): one directory, <script_dir>/audio_stream, holding the "
                   "package and its dependencies; site: that Python's site-packages (with "
                   "--break-system-packages when it is externally managed, PEP 668); none: do not "
                   "install the package (conf and checks only)")
    g.add_argument("--source", help="what pip installs: a project dir, a wheel or a requirement "
                   "(default: the audio_stream this installer runs from)")
    g.add_argument("--conf-source", help="directory with the conf samples (default: the project's conf/)")
    g.add_argument("--no-deps", action="store_true", help="do not install the dependencies (they are there)")
    g.add_argument("--reinstall", action="store_true", help="install even if the same version is there")
    g.add_argument("--no-conf", action="store_true", help="do not install the conf samples")
    return p


def report(facts, out=print):
    out("FreeSWITCH (asked through %s)" % (facts.switch or "nothing"))
    if facts.switch_error:
        out("  does not answer: %s" % facts.switch_error)
    elif facts.fs_version:
        out("  %s" % facts.fs_version)
    for name in ("script_dir", "conf_dir", "mod_dir"):
        if name in facts.dirs:
            path, where = facts.dirs[name]
            out("  %-11s %s (%s)" % (name, path, where))
        else:
            out("  %-11s not found" % name)
    if facts.mod_python3_so:
        lib = facts.libpython
        out("  mod_python3 %s%s, links %s" % (
            facts.mod_python3_so, {True: ", loaded", False: ", NOT loaded", None: ""}[facts.module_loaded],
            ("%s (%s)" % (lib[0], lib[1] or "NOT FOUND")) if lib else facts.ldd_error))
    elif facts.module_loaded is not None:
        out("  mod_python3 %s in the switch; no mod_python3.so here" % ("loaded" if facts.module_loaded else "NOT loaded"))
    py = facts.python
    if py:
        out("Python mod_python3 embeds: %s %s%s%s" % (
            py.executable, py.version, ", pip %s" % py.pip if py.pip else ", no pip",
            ", externally managed (PEP 668)" if py.externally_managed else ""))
        if py.package_version:
            out("  it imports audio_stream %s from %s" % (py.package_version, py.package_path))
        else:
            out("  it cannot import audio_stream yet (%s)" % py.package_error)
        if py.missing:
            out("  missing: %s" % "; ".join(py.missing))
    else:
        out("Python mod_python3 embeds: not found (%s)" % (facts.python_error or facts.ldd_error or "no mod_python3.so"))
    copy = facts.copy
    if copy:
        if copy.link:
            what = "a link to %s" % copy.link
        elif copy.manifest:
            what = "audio_stream %s, installed by %s (%s lists its %d files)" % (
                copy.manifest.get("version", "?"), P.INSTALLED_BY, P.MANIFEST, len(copy.manifest.get("files") or ()))
        else:
            what = "not installed by %s (no %s)" % (P.INSTALLED_BY, P.MANIFEST)
        out("  in the script dir: %s: %s" % (copy.path, what))
    if facts.answers is not None:
        out("  python audio_stream -> %s" % (facts.answers.splitlines()[0][:100] if facts.answers else "(nothing)"))


class Done:
    """What apply() did, for the manifest and the final words."""

    def __init__(self):
        self.installed = False
        self.files = None             # the package dir's files, when this run installed it there
        self.written = {}             # conf path -> sha256 of what this run wrote
        self.made_dirs = []           # directories this run made for them
        self.added_dists = ()         # site: distributions that were not there before


# what pip prints when it cannot reach the package index (DNS, no route, a proxy, TLS to the index)
_NO_INDEX = ("Failed to establish a new connection", "Temporary failure in name resolution",
             "Name or service not known", "Network is unreachable", "ProxyError", "Could not fetch URL",
             "connection broken by")


def pip_failure(returncode, output):
    """The error for a failed pip: its last lines, and, when it could not reach the package index,
    the way to install without it (which the operator cannot guess from pip's retries)."""
    tail = "\n".join(output.strip().splitlines()[-15:])
    text = "pip failed (exit status %d); its last lines:\n%s" % (returncode, tail)
    if any(sign in output for sign in _NO_INDEX):
        text += ("\npip could not reach the package index from this machine. Download the wheels "
                 "where it can (same Python version) and install from them: PIP_NO_INDEX=1 "
                 "PIP_FIND_LINKS=<dir> audio-stream-install (docs/operations.md, 'Without the "
                 "package index')")
    return text


def _run_pip(argv, out):
    out("$ %s" % " ".join(argv))
    with cli.progress("pip is installing (downloads and builds may take a minute)", after=5):
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise cli.CLIError(pip_failure(r.returncode, r.stdout))
    last = [line for line in r.stdout.splitlines() if line.startswith("Successfully installed")]
    out("  %s" % (last[-1] if last else "pip: done"))


def apply(plan, facts, out=print):
    """Run the plan's steps; returns Done."""
    done = Done()
    staging = P.staging_dir(facts)
    try:
        for step in plan.steps:
            if step.kind == "pack":
                F.fresh_staging(staging)
                F.pack_wheel(facts.source.location, facts.source.files, step.path, step.keep_ext)
                out("  packed %s" % step.path)
            elif step.kind == "stage":
                if not os.path.isdir(os.path.join(staging, "wheel")):
                    F.fresh_staging(staging)
                _run_pip(step.argv, out)
                new = F.arrange(os.path.join(staging, "target"))
                done.files = [f for f in install_probe.files_under(new)] + [P.MANIFEST]
                F.write_manifest(os.path.join(new, P.MANIFEST), _manifest(facts, plan, done))
                F.swap(new, step.path, staging)
                out("  installed %s (%d files)" % (step.path, len(done.files)))
                done.installed = True
            elif step.kind == "pip":
                before = set(facts.python.dists)
                _run_pip(step.argv, out)
                done.installed = True
                install_probe.recheck_dists(facts)
                done.added_dists = tuple(sorted(set(facts.python.dists) - before))
            elif step.kind == "write":
                done.made_dirs += F.write_file(step.path, step.content)
                done.written[step.path] = P.sha256(step.content)
                out("  wrote %s" % step.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if done.installed or done.written or facts.outside_manifest:
        path = P.manifest_path(facts, plan.method, done.installed and plan.method == "target")
        F.write_manifest(path, _manifest(facts, plan, done))
        outside = os.path.join(facts.dirs["script_dir"][0], P.OUTSIDE_MANIFEST)
        if path != outside and os.path.exists(outside):
            os.unlink(outside)
        out("  recorded what was installed in %s" % path)
    return done


def _manifest(facts, plan, done):
    current = _conf_now(facts)
    src = facts.source
    return P.merge_manifest(facts, facts.our_version, plan.method, facts.python.executable if facts.python else None,
                            "%s %s" % (src.kind, src.location) if src else None, done.files, done.written,
                            current, done.added_dists, done.made_dirs)


def _print_plan(plan, dry_run):
    """Print the plan; True when something blocks it (and it said what)."""
    if plan.steps:
        print("Plan:" if dry_run else "Doing:")
        for i, step in enumerate(plan.steps, 1):
            print("  %d. %s" % (i, step.text))
            if step.argv:
                print("     %s" % " ".join(step.argv))
            if step.why:
                print("     why: %s" % step.why)
    for note in plan.notes:
        print("note: %s" % note)
    for b in plan.blockers:
        print("BLOCKED: %s" % b)
    if plan.blockers and not dry_run:
        print("Nothing was changed.")
    return bool(plan.blockers)


def _conf_now(facts):
    """conf path -> sha256 of its content now (None: missing), for the conf files the manifests list."""
    return {path: F.file_sha256(path)
            for m in ((facts.copy.manifest if facts.copy else None), facts.outside_manifest)
            for path in (m or {}).get("conf") or {}}


def uninstall(a, facts):
    plan = P.uninstall_plan(facts, facts.copy.present if facts.copy else (), _conf_now(facts))
    if _print_plan(plan, a.dry_run):
        return 1
    removed = set()
    if not a.dry_run:
        for step in plan.steps:
            if step.kind == "remove-tree":
                n = F.remove_tree(step.path, step.files)
                print("  removed %d files%s" % (n, "" if os.path.lexists(step.path) else " and %s" % step.path))
            elif step.kind == "remove":
                os.unlink(step.path)
                print("  removed %s" % step.path)
            elif step.kind == "pip-uninstall":
                _run_pip(step.argv, print)
            elif step.kind == "remove-dir":
                if os.path.isdir(step.path) and not os.listdir(step.path):
                    os.rmdir(step.path)
                    print("  removed %s" % step.path)
                elif os.path.isdir(step.path):
                    print("  kept %s: it is not empty" % step.path)
            removed.add(step.path)
    else:
        removed = {s.path for s in plan.steps}
    steps = P.after_uninstall(facts, removed)
    if steps:
        print("Next:")
        for s in steps:
            print("  - %s" % s)
    print("nothing blocks the removal" if a.dry_run else "removed")
    return 0


def main(argv=None, prog=PROG):
    from ..version import VERSION
    a = parser(prog).parse_args(argv)
    opts = P.Options(method=a.method, no_deps=a.no_deps, reinstall=a.reinstall, conf=not a.no_conf,
                     dry_run=a.dry_run)
    print("audio_stream %s installer%s%s" % (VERSION, ": uninstall" if a.uninstall else "",
                                             " (dry run: nothing is changed)" if a.dry_run else ""))
    with cli.progress("asking FreeSWITCH and its Python", after=3):
        facts = install_probe.probe(a, VERSION)
    report(facts)
    if a.uninstall:
        return uninstall(a, facts)
    plan = P.build_plan(facts, opts)
    if _print_plan(plan, a.dry_run):
        return 1
    done = Done()
    if not a.dry_run:
        done = apply(plan, facts)
        install_probe.recheck(a, facts)
        py = facts.python
        if py and py.package_version:
            print("the embedded Python now imports audio_stream %s from %s%s" % (
                py.package_version, py.package_path, "; missing: " + "; ".join(py.missing) if py.missing else ""))
    will_install = a.dry_run and any(step.kind in ("pip", "stage") for step in plan.steps)
    steps = P.next_steps(facts, done.installed, will_install)
    if steps:
        print("Next:")
        for s in steps:
            print("  - %s" % s)
    blocking = [s for s in steps if not s.startswith("optional:") and not s.startswith("restart")]
    if not blocking:
        if facts.answers and facts.answers.startswith("-USAGE") and not a.dry_run:
            print("audio_stream answers in FreeSWITCH: %s -x 'python audio_stream' -> -USAGE …" % P.fs_cli(facts))
        else:
            print("nothing blocks the install" if a.dry_run else "done")
        return 0
    return 1


def console():
    """The audio-stream-install console script."""
    cli.run(main)


if __name__ == "__main__":
    console()
