"""Test events shaped like FunctionGraph's trigger events, as its console offers them.

`fgd event NAME` prints one, ready for `fgd invoke FUNC --data @-`. The shapes follow
FunctionGraph's documented example events for each trigger; the values are examples
(ids, times and names of this node where they matter: region and project).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(now * 1000) % 1000:03d}Z"


def timer(now: float, region: str, project: str) -> Event:
    return {
        "version": "v1.0",
        "time": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "trigger_type": "TIMER",
        "trigger_name": "Timer_001",
        "user_event": "User Custom Payload",
    }


def apig(now: float, region: str, project: str) -> Event:
    body = json.dumps({"test": "body"})
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "requestContext": {"apiId": uuid.uuid4().hex, "requestId": uuid.uuid4().hex, "stage": "RELEASE"},
        "queryStringParameters": {"responseType": "html"},
        "httpMethod": "GET",
        "pathParameters": {},
        "headers": {
            "accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "accept-encoding": "gzip, deflate, br",
            "host": "127.0.0.1:8901",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "x-forwarded-for": "127.0.0.1",
            "x-forwarded-proto": "http",
            "x-real-ip": "127.0.0.1",
        },
        "path": "/apig-event-template",
        "isBase64Encoded": True,
    }


def smn(now: float, region: str, project: str) -> Event:
    return {
        "record": [
            {
                "event_version": "1.0",
                "smn": {
                    "topic_urn": f"urn:smn:{region}:{project}:test-topic",
                    "timestamp": _iso(now),
                    "message_attributes": None,
                    "message": "this is smn message content",
                    "type": "notification",
                    "message_id": uuid.uuid4().hex,
                    "subject": "this is smn message subject",
                },
                "event_subscription_urn": f"urn:fss:{region}:{project}:function:default:read-smn-message:latest",
                "event_source": "smn",
            }
        ],
        "functionname": "read-smn-message",
        "requestId": str(uuid.uuid4()),
        "timestamp": datetime.fromtimestamp(now, UTC).strftime("%a %b %d %Y %H:%M:%S GMT+0000 (UTC)"),
    }


def obs(now: float, region: str, project: str) -> Event:
    return {
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "aws:s3",
                "eventTime": _iso(now),
                "eventName": "ObjectCreated:Post",
                "Region": region,
                "userIdentity": {"principalId": uuid.uuid4().hex},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-obs-request-id": uuid.uuid4().hex.upper(), "x-obs-id-2": uuid.uuid4().hex},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "UK1DGFPYUKKKFGDEUX0YJL2Q5D9PGMJB",
                    "bucket": {
                        "name": "functionstorage-template",
                        "ownerIdentity": {"PrincipalId": uuid.uuid4().hex},
                        "arn": "arn:aws:s3:::functionstorage-template",
                    },
                    "object": {
                        "key": "job.png",
                        "eTag": "9d377b10ce778c4938b3c7e2c63a229a",
                        "size": 777835,
                        "versionId": "null",
                        "sequencer": "00000000000000000000000000000000",
                    },
                },
            }
        ]
    }


def kafka(now: float, region: str, project: str) -> Event:
    return {
        "event_version": "v1.0",
        "event_time": int(now),
        "trigger_type": "KAFKA",
        "region": region,
        "instance_id": str(uuid.uuid4()),
        "records": [{"messages": ["kafka message1", "kafka message2", "kafka message3"], "topic_id": "topic-test"}],
    }


def dms(now: float, region: str, project: str) -> Event:
    return {
        "events": [
            {
                "message": {"attributes": {"attr1": "test", "attr2": "test"}, "body": "TEST", "tags": ["tag1"]},
                "queue_id": str(uuid.uuid4()),
            }
        ],
        "event_version": "v1.0",
        "event_time": int(now),
        "event_type": "MessageCreated",
        "region": region,
    }


def lts(now: float, region: str, project: str) -> Event:
    # LTS sends base64 of a JSON document whose `logs` is itself a JSON text of the log lines.
    logs = [
        {
            "message": "2018-08-08/08:08:08 [WRN] [test.go:08]This is a test message.",
            "time": int(now * 1000),
            "host_name": "ecs-test",
            "ip": "192.0.2.10",
            "path": "var/log/test.log",
            "log_uid": str(uuid.uuid4()),
            "line_no": 1,
        }
    ]
    data = {
        "logs": json.dumps(logs),
        "owner": project,
        "log_group_id": str(uuid.uuid4()),
        "topic_id": str(uuid.uuid4()),
    }
    return {"lts": {"data": base64.b64encode(json.dumps(data).encode()).decode()}}


def cts(now: float, region: str, project: str) -> Event:
    millis = int(now * 1000)
    return {
        "cts": {
            "time": millis,
            "user": {
                "name": "userName",
                "id": uuid.uuid4().hex,
                "domain": {"name": "domainName", "id": uuid.uuid4().hex},
            },
            "request": {},
            "response": {},
            "code": 204,
            "service_type": "FunctionGraph",
            "resource_type": "",
            "resource_name": "",
            "resource_id": {},
            "trace_name": "deleteFunction",
            "trace_type": "ConsoleAction",
            "record_time": millis,
            "trace_id": str(uuid.uuid4()),
            "trace_status": "normal",
        }
    }


def dds(now: float, region: str, project: str) -> Event:
    oid = uuid.uuid4().hex[:24]
    return {
        "records": [
            {
                "event_source": "dds",
                "event_name": "insert",
                "region": region,
                "event_version": "1.0",
                "dds": {
                    "size_bytes": "100",
                    "token": json.dumps({"_data": uuid.uuid4().hex.upper() * 2}),
                    "full_document": json.dumps(
                        {"_id": {"$oid": oid}, "name": "dds", "age": {"$numberDouble": "52.0"}}
                    ),
                    "ns": json.dumps({"db": "functiongraph", "coll": "person"}),
                },
                "event_source_id": str(uuid.uuid4()),
            }
        ]
    }


TEMPLATES: dict[str, Callable[[float, str, str], Event]] = {
    "timer": timer,
    "apig": apig,
    "smn": smn,
    "obs": obs,
    "kafka": kafka,
    "dms": dms,
    "lts": lts,
    "cts": cts,
    "dds": dds,
}


def event(name: str, *, region: str = "local", project: str = "default", now: float | None = None) -> Event:
    """The test event `name` (a key of TEMPLATES); KeyError for another name."""
    return TEMPLATES[name](time.time() if now is None else now, region, project)
