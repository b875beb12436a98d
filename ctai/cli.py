"""The ``ctai`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ctai import config as configuration
from ctai.errors import ConfigError
from ctai.inputs import pool
from ctai.memory import keep_freed_memory
from ctai.types import CLASSES, Failure, Job, Result, SourceImage

if TYPE_CHECKING:
    from ctai.outbox import Message
    from ctai.results import JobRecord


def _inputs(paths: list[Path], patient) -> Iterator[SourceImage | Failure]:
    """The loaded images (or why not), with a progress bar on a terminal (``inputs.load_files``)."""
    from ctai import inputs

    files = list(inputs.iter_files(paths))
    return inputs.load_files(tqdm(files, unit="image", disable=None, file=sys.stderr, leave=False), patient)


def _outcome_json(outcome: Result | Failure) -> dict:
    if isinstance(outcome, Failure):
        return {"path": outcome.path, "error": outcome.reason}
    p = outcome.prediction
    return {"path": outcome.source.path, "label": p.label, "probabilities": p.probabilities,
            "model": {"name": p.model.name, "version": p.model.version}, "calibration": {"site": p.calibration},
            "typicality": p.typicality, "flags": [{"code": f.code, "reason": f.reason} for f in outcome.flags]}


def _outcome_row(outcome: Result | Failure) -> str:
    if isinstance(outcome, Failure):
        return f"{outcome.path}: error: {outcome.reason}"
    probs = "  ".join(f"{c} {outcome.prediction.probabilities[c]:6.1%}" for c in CLASSES)
    flags = "".join(f"  [{flag.reason}]" for flag in outcome.flags)
    return f"{outcome.source.path}: {outcome.prediction.label:<9}  {probs}{flags}"


@contextmanager
def _settled() -> Iterator[None]:
    """While a command's job runs, keep what its start-up made (modules, plugins, configuration)
    out of the garbage collector's full collections: it outlives the job, and each full
    collection went through all of it again, holding the GIL from the network's threads. A
    ``classify --out`` of 360 images spent 0.30 s in five full collections, and 0.16 s with this."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def cmd_classify(args: argparse.Namespace, config: configuration.Config) -> int:
    from ctai.inputs.wrap import PatientInfo
    from ctai.pipeline import Pipeline

    if args.out:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file of that name, no permission, a read-only disk
            print(f"ctai classify: --out {args.out}: cannot be a folder of results ({exc.strerror})", file=sys.stderr)
            return 2
    try:
        patient = PatientInfo(id=args.patient_id, name=args.patient_name, accession=args.accession)
    except ValueError as exc:
        print(f"ctai classify: patient {exc}", file=sys.stderr)
        return 2
    options = {"send": args.deliver, "outputs": bool(args.out or args.deliver or config["folder"]["path"]),
               **({"out_dir": str(args.out)} if args.out else {})}
    job = Job(id="cli", source="cli", options=options)
    pipeline = Pipeline(config)
    if args.deliver and pipeline.site.shadow:
        print("ctai classify: shadow mode (`ctai site`): nothing is delivered", file=sys.stderr)
    sends = args.deliver and not pipeline.site.shadow
    queued = _outbox_size(config) if sends else 0
    sources = _inputs(args.paths, patient)
    failed = classified = 0
    with _settled():
        for outcome in pipeline.process(job, sources):
            failed += isinstance(outcome, Failure)
            classified += isinstance(outcome, Result)
            print(json.dumps(_outcome_json(outcome)) if args.json else _outcome_row(outcome), flush=True)
    if sends and classified:
        failed += not _delivered_now(config, _outbox_size(config) - queued)
    return 1 if failed else 0


def _outbox_size(config: configuration.Config) -> int:
    """Messages ever queued in the outbox and not purged yet, delivered ones included."""
    from ctai.outbox import Outbox

    return sum(Outbox.from_config(config).counts().values())


def _delivered_now(config: configuration.Config, queued: int) -> bool:
    """``classify --deliver``'s end, once ``queued`` messages were put in the outbox: send every
    pending message now (``send_now``), saying on stderr what each channel delivered and what
    still waits; whether nothing waits."""
    from ctai.outbox import Outbox, send_now

    if not queued:
        print("ctai classify: --deliver: nothing was queued: no destination is configured ([cstore] host, "
              "[dicomweb] url, [hl7] host, [fhir] base_url, [orthanc] deliver), these results were queued "
              "before (`ctai outbox`), or they lack what a destination needs (said above)", file=sys.stderr)
    for channel, delivered in send_now(config).items():
        if delivered is None:
            print(f"ctai classify: {channel}: being sent by another ctai process", file=sys.stderr)
        elif delivered:
            print(f"ctai classify: {channel}: {delivered} delivered", file=sys.stderr)
    outbox = Outbox.from_config(config)
    waiting = outbox.messages("pending") + outbox.messages("dead")
    for message in waiting:
        print(f"ctai classify: not delivered: {_message_line(message)}", file=sys.stderr)
    if waiting:
        print("ctai classify: the outbox keeps them: `ctai serve` or `ctai outbox --send` sends them, "
              "`ctai outbox` lists them", file=sys.stderr)
    return not waiting


def cmd_evaluate(args: argparse.Namespace, config: configuration.Config) -> int:
    import numpy as np

    from ctai import evaluation
    from ctai.inputs.wrap import PatientInfo
    from ctai.labelled_folder import scan
    from ctai.pipeline import Pipeline

    try:
        samples = scan(args.folder)
    except ValueError as exc:  # no labelled images there
        print(f"ctai evaluate: {exc}", file=sys.stderr)
        return 2
    by_path = {str(s.path): s for s in samples}
    sources = _inputs([s.path for s in samples], PatientInfo())
    y, probs, patients = [], [], []
    job = Job(id="evaluate", source="cli", options={"send": False, "outputs": False})
    pipeline = Pipeline(config)
    with _settled():
        for outcome in pipeline.process(job, sources):
            if isinstance(outcome, Failure):
                print(f"{outcome.path}: error: {outcome.reason}", file=sys.stderr)
                continue
            if outcome.source.path not in by_path:  # a CT series, projected from several files
                print(f"{outcome.source.path}: error: a CT series has no label of its own", file=sys.stderr)
                continue
            sample = by_path[outcome.source.path]
            y.append(sample.label)
            patients.append(sample.patient)
            probs.append([outcome.prediction.probabilities[c] for c in CLASSES])
    if not y:
        print("no image could be classified", file=sys.stderr)
        return 1
    report = evaluation.compute(np.array(y), np.array(probs))
    report["intervals"] = evaluation.intervals(np.array(y), np.array(probs), patients)
    report["failed"] = len(samples) - len(y)
    print(json.dumps(report, indent=2) if args.json else evaluation.format_report(report))
    return 0


def cmd_config(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai config [--secrets]``: the effective configuration; its secrets only when asked, and
    that is audited."""
    from ctai import audit

    if args.secrets:
        audit.record(config, audit.Event("config.secrets", audit.cli_actor()))
    print(configuration.to_toml(config if args.secrets else configuration.redacted(config)), end="")
    return 0


def cmd_plugins(args: argparse.Namespace, config: configuration.Config) -> int:
    from ctai.plugins import describe, plugin_manager

    rows = describe(plugin_manager(config))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<12} {row['module']:<28} {', '.join(row['hooks'])}")
    return 0


def cmd_outbox(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai outbox [--send]``, ``ctai outbox retry ID|--all``, ``ctai outbox drop ID``.

    Lists the messages not delivered yet, pending and dead letters; exits 1 if there are any.
    """
    from ctai import audit
    from ctai.outbox import Outbox, send_now

    outbox = Outbox.from_config(config)
    if args.action == "retry":
        revived = outbox.revive(None if args.all else args.id)
        audit.record(config, audit.Event("outbox.retry", audit.cli_actor(),
                                         {"message": "all" if args.all else args.id, "count": revived},
                                         audit.SUCCESS if revived or args.all else audit.FAILURE))
        if not (revived or args.all):
            print(f"ctai: no dead letter #{args.id}", file=sys.stderr)
            return 2
        print(f"{revived} dead letter(s) pending again")
    elif args.action == "drop":
        dropped = outbox.drop(args.id)
        audit.record(config, audit.Event("outbox.drop", audit.cli_actor(), {"message": args.id},
                                         audit.SUCCESS if dropped else audit.FAILURE))
        if not dropped:
            print(f"ctai: no pending message or dead letter #{args.id}", file=sys.stderr)
            return 2
        print(f"#{args.id} dropped")
    if args.send:
        for channel, delivered in send_now(config).items():
            print(f"{channel}: " + ("being sent by another ctai process" if delivered is None
                                    else f"{delivered} delivered now"))
    waiting = outbox.messages("pending") + outbox.messages("dead")
    for message in waiting:
        print(_message_line(message))
    return 1 if waiting else 0


def _message_line(m: Message) -> str:
    """One outbox message not delivered yet, as ``ctai outbox`` and ``classify --deliver`` list it."""
    return f"#{m.id} {m.channel} {m.state} {m.key} attempts={m.attempts} {m.last_error or ''}".rstrip()


def cmd_jobs(args: argparse.Namespace, config: configuration.Config) -> int:
    from ctai.errors import TransientError
    from ctai.results import JobStore

    try:
        records = JobStore(config).latest(args.limit, args.status)
    except (TransientError, RuntimeError) as exc:  # Redis down, full or refusing the password
        print(f"ctai jobs: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(json.dumps(record.as_dict()) if args.json else _job_line(record))
    return 0


def _job_line(record: JobRecord) -> str:
    """One line of ``ctai jobs``."""
    when = record.finished or record.started or record.enqueued
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if when else "-"
    probs = "  ".join(f"{c} {record.probabilities[c]:6.1%}" for c in CLASSES) if record.probabilities else ""
    seconds = f"{record.seconds:.1f} s" if record.seconds is not None else ""
    line = f"{stamp}  {record.id:<50} {record.status:<8} {record.label or '':<9} {probs} {seconds}"
    flags = "".join(f"  [{flag['reason']}]" for flag in (record.details or {}).get("flags", []))
    return line.rstrip() + flags + (f"  {record.error}" if record.error else "")


def cmd_site(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai site status|live|shadow|validate|calibrate|drift``: going live at a new hospital."""
    from ctai import audit
    from ctai.site import drift, state, workflow
    from ctai.site.sources import SourceError

    who = args.by or state.whoami()
    actor = audit.Actor("cli", who, audit.cli_actor().address)
    try:
        if args.action in state.MODES:
            state.set_mode(config, args.action, who)
            audit.record(config, audit.Event("site.mode", actor, {"mode": args.action}))
            print(f"mode: {args.action} (recorded as changed by {who})")
        elif args.action == "validate":
            print(workflow.validate(config, args.source, args.report))
        elif args.action == "calibrate":
            if args.reset or args.use:
                state.use(config, args.use, who)
                audit.record(config, audit.Event("site.calibration", actor, {"calibration": args.use or state.OWN}))
                print(f"calibration in force: {args.use or state.OWN}")
            elif args.source is None:
                print("ctai site calibrate: give SOURCE, --reset or --use ID", file=sys.stderr)
                return 2
            else:
                print(workflow.calibrate(config, args.source, who))
                active = state.active(config)
                audit.record(config, audit.Event("site.calibration", actor,
                                                 {"calibration": active.id if active else state.OWN,
                                                  "source": str(args.source)}))
        elif args.action == "drift":
            report = drift.check(config)
            print(f"compared with {report.baseline}" + ("" if report.judged else " (too few studies to judge yet)"))
            for statistic in report.statistics:
                print(("ALARM " if report.judged and statistic.alarm else "ok    ") + statistic.describe())
            return 1 if report.alarms else 0
        else:
            print(workflow.status(config))
    except (SourceError, workflow.Refused, ValueError) as exc:
        print(f"ctai site {args.action or 'status'}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai prepare``: load the networks and convert them for the configured backend into the
    data dir (``Pipeline.warm_up``), so that neither ``ctai serve``'s worker nor a first job waits."""
    from ctai.pipeline import Pipeline

    started = time.monotonic()
    Pipeline(config).warm_up()
    print(f"ctai: networks ready for backend {config['model']['backend']} in {configuration.data_dir(config)}"
          f" ({time.monotonic() - started:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace, config: configuration.Config) -> int:
    from ctai import serve

    return serve.serve(config)


def cmd_worker(args: argparse.Namespace, config: configuration.Config) -> int:
    from ctai import serve

    serve.setup_logging()
    return serve.run_services(serve.worker_services(config))


def cmd_web(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai web``: the web app alone, in the foreground; uploads are classified by ``ctai worker``."""
    from ctai import serve
    from ctai.web.app import WebService

    serve.setup_logging()
    return serve.run_services([WebService(config)])


def cmd_audit(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai audit [--since ...] [--patient ...] [--action ...] [--json]``: the audit trail, oldest first."""
    from ctai import audit

    try:
        since = audit.since_seconds(args.since) if args.since else None
    except ValueError:
        print(f"ctai: --since {args.since!r} is neither an ISO date or time nor an age such as 2h or 7d",
              file=sys.stderr)
        return 2
    listed = False
    for item in audit.matching(audit.read(config), since, args.patient, args.action):
        listed = True
        if args.json:
            print(json.dumps(item, ensure_ascii=False))
            continue
        actor = item["actor"]
        who = f"{actor['kind']}:{actor['id']}" + (f"@{actor['address']}" if actor.get("address") else "")
        what = " ".join(f"{k}={v}" for k, v in item.get("object", {}).items())
        print(f"{item['time']} {item['action']} {item['outcome']} {who} {what} {item.get('detail', '')}".rstrip())
    # Nothing listed: the trail is read again only then, to tell a mistyped action from a quiet time.
    if not listed and args.action and (actions := {item["action"] for item in audit.read(config)}) and not any(
            action.startswith(args.action) for action in actions):
        print(f"ctai audit: no action starts with {args.action!r}; the trail has {', '.join(sorted(actions))}",
              file=sys.stderr)
        return 2
    return 0


def cmd_tls_init(args: argparse.Namespace, config: configuration.Config) -> int:
    """``ctai tls init``: a private CA and server and client certificates in the data dir."""
    from ctai import tls

    made = tls.init(config, args.host, force=args.force)
    print(tls.instructions(made))
    return 0


def _at_least_one(text: str) -> int:
    """A whole number of at least 1, for argparse (SQLite reads a negative LIMIT as none)."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctai", description="AI chest-image classification for PACS and HIS.")
    parser.add_argument("--config", type=Path, help="TOML configuration file (default: $CTAI_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("classify", help="classify DICOM or image files and folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write the SR and SC of each image here")
    p.add_argument("--json", action="store_true", help="one JSON object per line per image")
    p.add_argument("--patient-id", default="", help="patient ID for PNG/JPEG inputs")
    p.add_argument("--patient-name", default="", help="patient name (DICOM PN, e.g. Doe^Jane) for PNG/JPEG inputs")
    p.add_argument("--accession", default="", help="accession number for PNG/JPEG inputs")
    p.add_argument("--deliver", action="store_true",
                   help="also send the results to the configured PACS, HIS, EHR and Orthanc ([cstore], "
                        "[dicomweb], [hl7], [fhir], [orthanc] deliver) before the command ends; what cannot "
                        "be sent stays in the outbox (exit 1). Without it nothing leaves this machine")
    p.set_defaults(func=cmd_classify)

    p = commands.add_parser("evaluate", help="metrics on a labelled folder (NORMAL/, PNEUMONIA/); "
                                             "sends nothing to the PACS or HIS")
    p.add_argument("folder", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("site", help="going live at a new hospital: mode, validation, calibration, drift")
    p.add_argument("--by", default="", help="who makes the change, for the record (default: user@host)")
    p.set_defaults(func=cmd_site, action="status")
    actions = p.add_subparsers(dest="action")
    actions.add_parser("status", help="mode, calibration in force, earlier versions, history")
    actions.add_parser("live", help="deliver results to the PACS, HIS, EHR and Orthanc")
    actions.add_parser("shadow", help="classify and record, deliver nothing; phones see no result")
    truth = ("a folder laid out as for `ctai evaluate`, a CSV path,label, or a RIS/PACS export "
             "accession,label or study_uid,label (labels normal, bacterial, viral, pneumonia)")
    validate = actions.add_parser("validate", help="metrics, intervals and an HTML report on the site's cases")
    validate.add_argument("source", type=Path, help=truth)
    validate.add_argument("--report", type=Path, help="the HTML report's path (default: under the data dir)")
    calibrate = actions.add_parser("calibrate", help="fit, compare and put in force a site calibration")
    calibrate.add_argument("source", type=Path, nargs="?", help=truth)
    which = calibrate.add_mutually_exclusive_group()
    which.add_argument("--reset", action="store_true", help="go back to the model's own calibration")
    which.add_argument("--use", metavar="ID", help="put an earlier version in force again")
    actions.add_parser("drift", help="the last studies against the expectation (exit 1 on an alarm)")

    p = commands.add_parser("config", help="print the effective configuration, its secrets hidden")
    p.add_argument("--secrets", action="store_true", help="show the passwords and tokens too")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser("plugins", help="list loaded plugins and the hooks each implements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = commands.add_parser("outbox", help="messages to the PACS and HIS not delivered yet, pending or dead"
                            " letters (exit 1 if any)")
    p.add_argument("--send", action="store_true", help="send every pending message now, ignoring backoff")
    p.set_defaults(func=cmd_outbox)
    actions = p.add_subparsers(dest="action")
    retry = actions.add_parser("retry", help="make a dead letter (or --all) pending again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the message's number, as `ctai outbox` lists it")
    which.add_argument("--all", action="store_true", help="every dead letter")
    drop = actions.add_parser("drop", help="never send this message (it stays listed as dropped in the database)")
    drop.add_argument("id", type=int)

    p = commands.add_parser("web", help="run the phone-upload web app ([web] in the configuration)")
    p.set_defaults(func=cmd_web)

    p = commands.add_parser("prepare", help="convert and load the networks now (setup does it; else the worker's"
                            " first start does)")
    p.set_defaults(func=cmd_prepare)

    p = commands.add_parser("serve", help="run Orthanc with ctai's plugin, the worker and the other services")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("worker", help="run queued jobs (Orthanc series, listener, uploads)")
    p.set_defaults(func=cmd_worker)

    p = commands.add_parser("audit", help="the audit trail: logins, upload sessions, uploads, deliveries, "
                                          "outbox and configuration commands")
    p.add_argument("--since", help="an ISO date or time (2026-12-04, 2026-12-04T10:00) or an age (30m, 2h, 7d)")
    p.add_argument("--patient", help="only events of this Patient ID")
    p.add_argument("--action", help="only this action, or actions starting with it (e.g. outbox); "
                   "exit 2 if no action in the trail does")
    p.add_argument("--json", action="store_true", help="the records as they are stored, one per line")
    p.set_defaults(func=cmd_audit)

    p = commands.add_parser("tls", help="certificates for test and small sites (not a replacement for a PKI)")
    tls_actions = p.add_subparsers(dest="action", required=True)
    init = tls_actions.add_parser("init", help="make a private CA and server and client certificates in "
                                               "<data dir>/tls")
    init.add_argument("--host", action="append", default=[],
                      help="a name or IP address the server certificate is for (again for more); "
                           "default: this host's name, localhost and 127.0.0.1")
    init.add_argument("--force", action="store_true", help="replace certificates already there")
    init.set_defaults(func=cmd_tls_init)

    p = commands.add_parser("jobs", help="list jobs: status, label, probabilities, time, error")
    p.add_argument("--limit", type=_at_least_one, default=50, help="how many jobs, the latest first (default: 50)")
    p.add_argument("--status", choices=["pending", "running", "done", "failed", "skipped"])
    p.add_argument("--json", action="store_true", help="one JSON object per line per job")
    p.set_defaults(func=cmd_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = configuration.load(args.config)
    except ValueError as exc:
        print(f"ctai: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command not in ("config", "plugins"):  # these two read no state: they show a wrong dir
            configuration.data_dir(config)
        return args.func(args, config)
    except ConfigError as exc:  # found once the command uses the setting (the data dir, TLS files)
        print(f"ctai: {exc}", file=sys.stderr)
        return 2


#: The ``ctai`` command's garbage-collector thresholds (``gc.set_threshold``; Python's are 700,
#: 10, 10): a young collection after 10,000 new objects. Each image makes thousands (pydicom's
#: elements), and each full collection goes through the 300,000 that live on (highdicom's tables
#: of the standard): a ``classify --out`` of 360 images spent 0.36 s of CPU in collections, with
#: the GIL held, and 0.10 s with these (docs/model-experiments.md, "2026-12-06 (night)").
GC_THRESHOLDS = (10_000, 10, 10)


def run() -> None:
    """The ``ctai`` command: ``main`` with ``GC_THRESHOLDS``, then exit without the interpreter's
    last garbage collections, which would go through every object the command made (0.45 s after
    a ``classify`` of 360 images); the system takes back the process's memory whole. Large arrays
    come from the heap (``ctai.memory.keep_freed_memory``); JPEG-family frames are decoded in
    other processes (``ctai.inputs.pool``)."""
    keep_freed_memory()
    pool.enable()
    gc.set_threshold(*GC_THRESHOLDS)
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
