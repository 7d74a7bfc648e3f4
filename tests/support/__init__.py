"""Shared test harness, registered as plugins from tests/conftest.py.

Fixtures: ``docker_client``, ``run_id``, ``run_labels``, ``test_deployment``,
``sandbox_image`` (docker_env.py); ``postgres_url``, ``fresh_postgres_db``,
``postgres_cluster`` (postgres.py); ``otlp_receiver`` (otlp.py). Helpers:
``net.free_port()``, ``processes.ServiceProcess``, ``images.build_busybox_image()``,
``docker_env.cleanup_run()``.
"""
