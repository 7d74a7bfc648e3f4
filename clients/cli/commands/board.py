"""``longshore board create|ls|show|rm``."""

from __future__ import annotations

import argparse
from typing import Any

from longshore.kanban.v1 import board_pb2, kanban_service_pb2

from clients.cli.connection import paged
from clients.cli.context import Context
from clients.cli.output import fmt_time, to_dict

_ORDER = ("triage", "todo", "ready", "running", "blocked", "done", "archived")


def register(sub: Any) -> None:
    """Add the ``board`` command group."""
    parser = sub.add_parser("board", help="boards")
    cmds = parser.add_subparsers(dest="board_cmd", required=True, metavar="COMMAND")
    create = cmds.add_parser("create", help="create a board")
    create.add_argument("board_id")
    create.add_argument("--name", default="", help="display name")
    create.add_argument("--description", default="")
    create.set_defaults(run=_create)
    ls = cmds.add_parser("ls", help="list boards with task counts")
    ls.set_defaults(run=_ls)
    show = cmds.add_parser("show", help="show a board")
    show.add_argument("board_id")
    show.set_defaults(run=_show)
    rm = cmds.add_parser("rm", help="delete a board")
    rm.add_argument("board_id")
    rm.add_argument("--force", action="store_true", help="delete its tasks too")
    rm.set_defaults(run=_rm)


def _counts(board: board_pb2.Board) -> str:
    return " ".join(f"{s}={board.task_counts[s]}" for s in _ORDER if board.task_counts.get(s))


def _create(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.CreateBoard(
        kanban_service_pb2.CreateBoardRequest(
            board=board_pb2.Board(
                board_id=args.board_id, display_name=args.name, description=args.description
            )
        )
    )
    ctx.out.message(reply.board, f"Created board {reply.board.board_id}")
    return 0


def _ls(args: argparse.Namespace, ctx: Context) -> int:
    boards = list(
        paged(ctx.conn.kanban.ListBoards, kanban_service_pb2.ListBoardsRequest(), "boards")
    )
    if ctx.out.json_mode:
        ctx.out.json({"boards": [to_dict(b) for b in boards]})
        return 0
    rows = [
        (b.board_id, b.display_name, _counts(b) or "-", fmt_time(b.create_time)) for b in boards
    ]
    ctx.out.table(("BOARD", "NAME", "TASKS", "CREATED"), rows)
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    board = ctx.conn.kanban.GetBoard(
        kanban_service_pb2.GetBoardRequest(board_id=args.board_id)
    ).board
    if ctx.out.json_mode:
        ctx.out.json(board)
        return 0
    ctx.out.line(f"board       {board.board_id}")
    ctx.out.line(f"name        {board.display_name}")
    ctx.out.line(f"description {board.description or '-'}")
    ctx.out.line(f"tasks       {_counts(board) or 'none'}")
    ctx.out.line(f"created     {fmt_time(board.create_time)}")
    return 0


def _rm(args: argparse.Namespace, ctx: Context) -> int:
    reply = ctx.conn.kanban.DeleteBoard(
        kanban_service_pb2.DeleteBoardRequest(board_id=args.board_id, force=args.force)
    )
    ctx.out.message(reply, f"Deleted board {args.board_id}")
    return 0
