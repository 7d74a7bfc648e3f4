"""``longshore profile create|ls|show|set|rm``."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from longshore.kanban.v1 import kanban_service_pb2, profile_pb2

from clients.cli.context import Context
from clients.cli.output import enum_label, fmt_time, to_dict

EXECUTORS = {
    "sandbox": profile_pb2.EXECUTOR_SANDBOX,
    "external": profile_pb2.EXECUTOR_EXTERNAL,
    "none": profile_pb2.EXECUTOR_NONE,
}


def register(sub: Any) -> None:
    """Add the ``profile`` command group."""
    parser = sub.add_parser("profile", help="agent profiles")
    cmds = parser.add_subparsers(dest="profile_cmd", required=True, metavar="COMMAND")
    create = cmds.add_parser("create", help="create a profile")
    create.add_argument("name")
    _profile_options(create, required=True)
    create.set_defaults(run=_create)
    update = cmds.add_parser("set", help="change a profile's fields")
    update.add_argument("name")
    _profile_options(update, required=False)
    update.set_defaults(run=_set)
    ls = cmds.add_parser("ls", help="list profiles with running counts")
    ls.set_defaults(run=_ls)
    show = cmds.add_parser("show", help="show a profile")
    show.add_argument("name")
    show.set_defaults(run=_show)
    rm = cmds.add_parser("rm", help="delete a profile")
    rm.add_argument("name")
    rm.set_defaults(run=_rm)


def _profile_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--executor", choices=sorted(EXECUTORS), required=required)
    parser.add_argument("--image", help="sandbox image for its tasks")
    parser.add_argument("--max-in-progress", type=int, help="per-profile cap (0 = the default)")
    parser.add_argument("--max-runtime", type=float, help="default max runtime, seconds")
    parser.add_argument("--keep-sandbox", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--description")
    parser.add_argument(
        "--allow-image",
        action="append",
        metavar="IMAGE",
        help="an image tasks may name instead of --image (repeat; replaces the list)",
    )
    parser.add_argument(
        "--retry-attempts", type=int, help="work failures in a row that block a task (0-100)"
    )
    parser.add_argument(
        "--retry-initial-backoff", type=float, help="seconds before the first retry"
    )
    parser.add_argument("--retry-max-backoff", type=float, help="longest delay between retries, s")
    parser.add_argument(
        "--warm-pool-size",
        type=int,
        help="warm sandboxes of its spec kept started for new tasks (0 = none)",
    )


def _build(
    args: argparse.Namespace, current: profile_pb2.Profile | None = None
) -> tuple[profile_pb2.Profile, list[str]]:
    """The profile to send and its update mask.

    ``current`` (for ``set``) is the profile as read: a change of the image
    keeps the rest of its spec (env values come back as ``<redacted>``, which
    the server keeps), and a change of one retry field keeps the others.
    """
    profile = profile_pb2.Profile(name=args.name)
    paths: list[str] = []
    if args.executor:
        profile.executor = EXECUTORS[args.executor]
        paths.append("executor")
    if args.image:
        if current is not None:
            profile.sandbox_spec.CopyFrom(current.sandbox_spec)
        profile.sandbox_spec.image = args.image
        paths.append("sandbox_spec")
    if args.allow_image is not None:
        profile.allowed_images.extend(args.allow_image)
        paths.append("allowed_images")
    retry = (args.retry_attempts, args.retry_initial_backoff, args.retry_max_backoff)
    if any(v is not None for v in retry):
        if current is not None:
            profile.retry_policy.CopyFrom(current.retry_policy)
        attempts, initial, longest = retry
        if attempts is not None:
            profile.retry_policy.max_attempts = attempts
        if initial is not None:
            profile.retry_policy.initial_backoff.CopyFrom(_seconds(initial))
        if longest is not None:
            profile.retry_policy.max_backoff.CopyFrom(_seconds(longest))
        paths.append("retry_policy")
    if args.max_in_progress is not None:
        profile.max_in_progress = args.max_in_progress
        paths.append("max_in_progress")
    if args.max_runtime is not None:
        profile.default_max_runtime.CopyFrom(_seconds(args.max_runtime))
        paths.append("default_max_runtime")
    if args.keep_sandbox is not None:
        profile.keep_sandbox = args.keep_sandbox
        paths.append("keep_sandbox")
    if args.description is not None:
        profile.description = args.description
        paths.append("description")
    if args.warm_pool_size is not None:
        profile.warm_pool_size = args.warm_pool_size
        paths.append("warm_pool_size")
    return profile, paths


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _create(args: argparse.Namespace, ctx: Context) -> int:
    profile, _ = _build(args)
    reply = ctx.conn.kanban.CreateProfile(kanban_service_pb2.CreateProfileRequest(profile=profile))
    ctx.out.message(reply.profile, f"Created profile {reply.profile.name} ({args.executor})")
    return 0


def _set(args: argparse.Namespace, ctx: Context) -> int:
    current = None
    if args.image or any(
        v is not None
        for v in (args.retry_attempts, args.retry_initial_backoff, args.retry_max_backoff)
    ):
        current = ctx.conn.kanban.GetProfile(
            kanban_service_pb2.GetProfileRequest(name=args.name)
        ).profile
    profile, paths = _build(args, current)
    if not paths:
        ctx.out.warn("nothing to change: pass at least one option")
        return 2
    reply = ctx.conn.kanban.UpdateProfile(
        kanban_service_pb2.UpdateProfileRequest(profile=profile, update_mask=FieldMask(paths=paths))
    )
    ctx.out.message(reply.profile, f"Updated profile {reply.profile.name}: {', '.join(paths)}")
    return 0


def _ls(args: argparse.Namespace, ctx: Context) -> int:
    request = kanban_service_pb2.ListProfilesRequest()
    running: dict[str, int] = {}
    profiles: list[profile_pb2.Profile] = []
    while True:
        reply = ctx.conn.kanban.ListProfiles(request)
        profiles.extend(reply.profiles)
        running.update(reply.running)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    if ctx.out.json_mode:
        ctx.out.json({"profiles": [to_dict(p) for p in profiles], "running": running})
        return 0
    rows = [
        (
            p.name,
            enum_label(profile_pb2.Executor.Name(p.executor), "EXECUTOR_"),
            p.sandbox_spec.image or "-",
            running.get(p.name, 0),
            p.max_in_progress or "default",
            p.description,
        )
        for p in profiles
    ]
    ctx.out.table(("PROFILE", "EXECUTOR", "IMAGE", "RUNNING", "CAP", "DESCRIPTION"), rows)
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    profile = ctx.conn.kanban.GetProfile(
        kanban_service_pb2.GetProfileRequest(name=args.name)
    ).profile
    if ctx.out.json_mode:
        ctx.out.json(profile)
        return 0
    runtime = profile.default_max_runtime.ToTimedelta().total_seconds()
    ctx.out.line(f"profile      {profile.name}")
    ctx.out.line(
        f"executor     {enum_label(profile_pb2.Executor.Name(profile.executor), 'EXECUTOR_')}"
    )
    ctx.out.line(f"image        {profile.sandbox_spec.image or '-'}")
    ctx.out.line(f"cap          {profile.max_in_progress or 'default'}")
    ctx.out.line(f"max runtime  {f'{runtime:g}s' if runtime else 'default'}")
    ctx.out.line(f"keep sandbox {'yes' if profile.keep_sandbox else 'no'}")
    ctx.out.line(f"warm pool    {profile.warm_pool_size or '-'}")
    ctx.out.line(f"allowed      {', '.join(profile.allowed_images) or '-'}")
    ctx.out.line(f"env          {', '.join(sorted(profile.sandbox_spec.env)) or '-'}")
    policy = profile.retry_policy
    initial = policy.initial_backoff.ToTimedelta().total_seconds()
    longest = policy.max_backoff.ToTimedelta().total_seconds()
    ctx.out.line(
        f"retries      attempts {policy.max_attempts or 'default'}, "
        f"backoff {f'{initial:g}s' if initial else 'default'} "
        f"up to {f'{longest:g}s' if longest else 'default'}"
    )
    ctx.out.line(f"description  {profile.description or '-'}")
    ctx.out.line(f"created      {fmt_time(profile.create_time)}")
    return 0


def _rm(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.DeleteProfile(kanban_service_pb2.DeleteProfileRequest(name=args.name))
    ctx.out.message(reply, f"Deleted profile {args.name}")
    return 0
