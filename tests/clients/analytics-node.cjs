// Drives @segment/analytics-node as a server application would: `node analytics-node.cjs
// HOST WRITE_KEY USER_ID` identifies the user, tracks an event and flushes before exiting.
const { Analytics } = require("@segment/analytics-node");

const [host, writeKey, userId] = process.argv.slice(2);
const analytics = new Analytics({ writeKey, host, flushAt: 1, maxRetries: 0 });
analytics.on("error", (error) => {
  console.error(error);
  process.exitCode = 1;
});
analytics.identify({ userId, traits: { plan: "pro" } });
analytics.track({ userId, event: "Added to Cart", properties: { sku: "A-1" } });
analytics.closeAndFlush({ timeout: 10000 });
