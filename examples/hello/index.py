import json


def handler(event, context):
    logger = context.getLogger()
    logger.info("hello from %s", context.getFunctionName())
    name = event.get("name", "world")
    return {
        "statusCode": 200,
        "isBase64Encoded": False,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"greeting": f"hello, {name}", "request_id": context.getRequestID()}),
    }
