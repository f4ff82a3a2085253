"""Python functions written the way FunctionGraph's documentation and samples write them.

Kept as published (coding line, module-level clients, `handler (event, context)` with a
space, global state set by an initializer), so the compatibility tests run them unchanged.
"""

TIMER = """# -*- coding:utf-8 -*-
import json


def handler (event, context):
    logger = context.getLogger()
    logger.info("timer event: " + json.dumps(event))
    if event.get("trigger_type") != "TIMER":
        raise ValueError("not a timer event")
    return "timer %s fired with %s" % (event["trigger_name"], event["user_event"])
"""

APIG = """# -*- coding:utf-8 -*-
import json


def handler (event, context):
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    return {
        "statusCode": 200,
        "isBase64Encoded": False,
        "body": json.dumps({"greeting": "hello " + name, "method": event["httpMethod"], "path": event["path"]}),
        "headers": {
            "Content-Type": "application/json"
        }
    }
"""

INITIALIZER = """# -*- coding:utf-8 -*-
import time

STATE = {}


def my_initializer(context):
    logger = context.getLogger()
    STATE["connected_at"] = time.time()
    STATE["function"] = context.getFunctionName()
    logger.info("initializer: connection pool ready for " + context.getFunctionName())


def handler(event, context):
    STATE["calls"] = STATE.get("calls", 0) + 1
    return {"function": STATE["function"], "connected_at": STATE["connected_at"], "calls": STATE["calls"]}
"""

LOGGER_AND_USER_DATA = """# -*- coding:utf-8 -*-
def handler(event, context):
    logger = context.getLogger()
    bucket = context.getUserData("obs_bucket")
    region = context.getUserData("region", "cn-north-4")
    logger.debug("debug is on")
    logger.info("bucket=%s region=%s", bucket, region)
    logger.warn("disk almost full")
    logger.error("could not reach %s", "db")
    return {"bucket": bucket, "region": region, "missing": context.getUserData("nope")}
"""

BUNDLED = """# -*- coding:utf-8 -*-
import base64
import datetime
import json


def check(name, probe):
    try:
        return name, [True, str(probe())]
    except Exception as exc:
        return name, [False, "%s: %s" % (type(exc).__name__, exc)]


def handler(event, context):
    def requests_probe():
        import requests
        prepared = requests.Request("POST", "https://example.invalid/api", json={"a": 1}).prepare()
        return prepared.headers["Content-Type"]

    def obs_probe():
        from obs import ObsClient
        client = ObsClient(access_key_id="ak", secret_access_key="sk", server="https://obs.example.invalid")
        return type(client).__name__

    def numpy_probe():
        import numpy as np
        return int(np.arange(10).sum())

    def yaml_probe():
        import yaml
        return yaml.safe_load("a: [1, 2]")["a"][1]

    def dateutil_probe():
        from dateutil import parser
        return parser.parse("2024-03-01T10:00:00+08:00").utcoffset() == datetime.timedelta(hours=8)

    def redis_probe():
        import redis
        return type(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.1)).__name__

    def sdk_core_probe():
        from huaweicloudsdkcore.auth.credentials import BasicCredentials
        return BasicCredentials("ak", "sk", "project").project_id

    def smn_probe():
        from huaweicloudsdksmn.v2 import PublishMessageRequest, PublishMessageRequestBody
        request = PublishMessageRequest(topic_urn="urn:smn:x:y:z", body=PublishMessageRequestBody(message="m"))
        return request.body.message

    def protobuf_probe():
        from google.protobuf import struct_pb2
        value = struct_pb2.Struct()
        value.update({"k": "v"})
        return value["k"]

    def pkg_resources_probe():
        import pkg_resources
        return pkg_resources.get_distribution("requests").project_name

    def toolbelt_probe():
        from requests_toolbelt import MultipartEncoder
        return MultipartEncoder(fields={"f": "v"}).content_type.split(";")[0]

    def futures_probe():
        from requests_futures.sessions import FuturesSession
        return type(FuturesSession()).__name__

    def httplib2_probe():
        import httplib2
        return type(httplib2.Http(timeout=1)).__name__

    def simplejson_probe():
        import simplejson
        return simplejson.dumps({"b": 1, "a": 2}, sort_keys=True)

    def six_probe():
        import six
        return six.PY3

    def cloudpickle_probe():
        import cloudpickle, pickle
        return pickle.loads(cloudpickle.dumps(lambda x: x * 2))(21)

    def chardet_probe():
        import chardet
        return chardet.detect("héllo wörld".encode("utf-8"))["encoding"]

    def certifi_probe():
        import certifi, os
        return os.path.isfile(certifi.where())

    def idna_probe():
        import idna
        return idna.encode("bücher.example").decode()

    def pyasn1_probe():
        from pyasn1.type import univ
        return int(univ.Integer(7))

    def typing_extensions_probe():
        from typing_extensions import Literal
        return Literal["x"] is not None

    def urllib3_probe():
        import urllib3
        return urllib3.util.parse_url("https://h:1/p").port

    probes = {
        "requests": requests_probe, "obs": obs_probe, "numpy": numpy_probe, "yaml": yaml_probe,
        "dateutil": dateutil_probe, "redis": redis_probe, "huaweicloudsdkcore": sdk_core_probe,
        "huaweicloudsdksmn": smn_probe, "google.protobuf": protobuf_probe,
        "pkg_resources": pkg_resources_probe, "requests_toolbelt": toolbelt_probe,
        "requests_futures": futures_probe, "httplib2": httplib2_probe, "simplejson": simplejson_probe,
        "six": six_probe, "cloudpickle": cloudpickle_probe, "chardet": chardet_probe,
        "certifi": certifi_probe, "idna": idna_probe, "pyasn1": pyasn1_probe,
        "typing_extensions": typing_extensions_probe, "urllib3": urllib3_probe,
    }
    for module in event.get("also_import", []):
        if module not in probes:
            probes[module] = lambda module=module: __import__(module).__name__
    return dict(check(name, probe) for name, probe in probes.items())
"""

# FunctionGraph's documented way to reach OBS with the function's agency.
AGENCY = """# -*- coding:utf-8 -*-
from obs import ObsClient


def handler(event, context):
    ak = context.getSecurityAccessKey()
    sk = context.getSecuritySecretKey()
    st = context.getSecurityToken()
    obs_client = ObsClient(access_key_id=ak, secret_access_key=sk, security_token=st,
                           server="https://obs.example.invalid")
    provider = obs_client.securityProvider
    return {
        "ak": provider.access_key_id,
        "sk": provider.secret_access_key,
        "token": provider.security_token,
        "iam_token": context.getToken(),
        "legacy_ak": context.getAccessKey(),
    }
"""
