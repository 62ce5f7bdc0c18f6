"""gRPC channels and stubs for calling the wgs services, with deadlines and safe retries.

Retries (service config) apply only to idempotent methods; every call must still pass a deadline
(`timeout=`); `deadline()` gives the configured default.
"""

from __future__ import annotations

import json

import grpc

from wgs.common.settings import rpc_timeout
from wgs.v1 import chat_pb2_grpc, dispatch_pb2_grpc, graph_pb2_grpc

IDEMPOTENT_METHODS = {
    "wgs.v1.GraphService": [
        "GetTask", "ListTasks", "GetChatRecord", "ListChatRecords", "ListMessages", "RenewLeases",
        "CreateChatTask", "AppendMessage", "RecordRunStarted", "RecordRunExited", "UpdateChatRuntime",
    ],
    "wgs.v1.DispatchService": ["PlanSpawn"],
    "wgs.v1.ChatService": ["GetChat", "ListChats", "ListChatMessages"],
}


def _service_config() -> str:
    names = [{"service": svc, "method": m} for svc, methods in IDEMPOTENT_METHODS.items() for m in methods]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


CHANNEL_OPTIONS = [
    ("grpc.service_config", _service_config()),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


def deadline() -> float:
    return rpc_timeout()


def aio_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def sync_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def graph_stub(channel: grpc.aio.Channel) -> graph_pb2_grpc.GraphServiceStub:
    return graph_pb2_grpc.GraphServiceStub(channel)


def dispatch_stub(channel: grpc.aio.Channel) -> dispatch_pb2_grpc.DispatchServiceStub:
    return dispatch_pb2_grpc.DispatchServiceStub(channel)


def chat_stub(channel: grpc.aio.Channel) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel)
