// The Node.js twin of examples/hello (printed by `make run`): FunctionGraph's async handler form.
exports.handler = async (event, context) => {
  context.getLogger().info('hello from %s', context.getFunctionName());
  const name = (event && event.name) || 'world';
  return {
    statusCode: 200,
    isBase64Encoded: false,
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ greeting: `hello, ${name}`, request_id: context.getRequestID() }),
  };
};
