"""An agent framework that uses E2B's SDK (Haystack's e2b integration), end to end.

A Haystack ``Agent`` with the integration's sandbox tools and a scripted chat
model (no model call leaves the machine): the model asks to write a script,
then to run it, then answers with what the run printed. The tools act
through the pinned E2B SDK, the front door, the gateway and the manager on
the real engine; the answer can only hold the number if the script ran in a
Longshore sandbox.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from haystack import component
from haystack.components.agents import Agent
from haystack.dataclasses import ChatMessage, ToolCall
from haystack_integrations.tools.e2b import (
    E2BSandbox,
    RunBashCommandTool,
    WriteFileTool,
)
from longshore.sandbox.v1 import sandbox_service_pb2 as spb

from tests.integration.e2b.conftest import TEMPLATE
from tests.integration.e2b.rig import E2bRig
from tests.integration.gateway.stack import auth

SCRIPT = "/work/answer.sh"


@component
class ScriptedChatGenerator:
    """A chat model that follows a fixed plan: write, run, then report the run's output."""

    def __init__(self) -> None:
        self.turn = 0

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage], tools: Any = None, **_: Any) -> dict[str, Any]:
        self.turn += 1
        if self.turn == 1:
            call = ToolCall(
                tool_name="write_file",
                arguments={"path": SCRIPT, "content": "echo answer=$((6 * 7))\n"},
            )
            return {"replies": [ChatMessage.from_assistant(tool_calls=[call])]}
        if self.turn == 2:
            call = ToolCall(tool_name="run_bash_command", arguments={"command": f"sh {SCRIPT}"})
            return {"replies": [ChatMessage.from_assistant(tool_calls=[call])]}
        results = [m.tool_call_result.result for m in messages if m.tool_call_result is not None]
        return {"replies": [ChatMessage.from_assistant(f"The sandbox said: {results[-1]}")]}


def test_haystack_agent_writes_and_runs_a_file_in_a_longshore_sandbox(
    rig: E2bRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("E2B_API_KEY", rig.keys.alice)
    sandbox = E2BSandbox(sandbox_template=TEMPLATE, timeout=120)
    agent = Agent(
        chat_generator=ScriptedChatGenerator(),
        tools=[WriteFileTool(sandbox=sandbox), RunBashCommandTool(sandbox=sandbox)],
        max_agent_steps=5,
    )
    agent.warm_up()
    try:
        e2b_id = sandbox._sandbox.sandbox_id
        # The agent's sandbox is a Longshore sandbox of the template's profile.
        boxes = rig.stubs.sandbox.ListSandboxes(
            spb.ListSandboxesRequest(task_id=e2b_id), timeout=60, metadata=auth(rig.keys.admin)
        ).sandboxes
        assert [b.profile for b in boxes] == [TEMPLATE]
        result = agent.run(messages=[ChatMessage.from_user("What is six times seven?")])
        answer = result["messages"][-1].text or ""
        assert "answer=42" in answer, result["messages"]
        # The file the tool wrote is there, read back through the SDK.
        assert sandbox._sandbox.files.read(SCRIPT) == "echo answer=$((6 * 7))\n"
    finally:
        sandbox.close()
