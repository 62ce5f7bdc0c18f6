"""Names of our own span attributes (namespace `wgs.*`), in one place for every process.

Standard names (process.*, error.type, rpc.*, server.address) come from the OpenTelemetry semantic
conventions and are used as they are.
"""

CHAT_ID = "wgs.chat.id"
TASK_ID = "wgs.task.id"
SUPERVISOR_ID = "wgs.supervisor.id"
RUN_NUMBER = "wgs.run.number"
RESTART_COUNT = "wgs.chat.restart_count"
RUNTIME_STATE = "wgs.chat.state"
STDERR_PATH = "wgs.stderr.path"
EXIT_SIGNAL = "wgs.exit.signal"
MESSAGE_SEQ = "wgs.message.seq"
REQUEST_ID = "wgs.message.request_id"
OUTCOME = "wgs.outcome"

PLAN_EXECUTOR = "wgs.plan.executor"
PLAN_EXECUTOR_SOURCE = "wgs.plan.executor.source"
PLAN_MODEL = "wgs.plan.model"
PLAN_MODEL_SOURCE = "wgs.plan.model.source"
PLAN_ENDPOINT_NAME = "wgs.plan.endpoint.name"
PLAN_ENDPOINT_URL = "wgs.plan.endpoint.url"
PLAN_ENDPOINT_SOURCE = "wgs.plan.endpoint.source"
