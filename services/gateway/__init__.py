"""The gateway: Longshore's one authenticated gRPC front door.

It serves `SandboxService`, `KanbanService` and `WorkerService` by forwarding
raw bytes to the backends (auth, rate limits, deadlines and trace context
applied on the way), plus its own `GatewayService`.
"""
