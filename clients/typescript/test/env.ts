// What console/tests/typescript.rs set up: the console's address and a token per role.
import { createClient } from "@event-bus/client";

function need(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through console/tests/typescript.rs (scripts/test.sh clients)`);
  return v;
}

export const env = {
  url: need("EB_URL"),
  tenantA: need("EB_TENANT_A"),
  /** an event of tenant B */
  eventB: need("EB_EVENT_B"),
  reader: need("EB_TOKEN_READER"),
  operator: need("EB_TOKEN_OPERATOR"),
  admin: need("EB_TOKEN_ADMIN"),
  otherReader: need("EB_TOKEN_OTHER_READER"),
};

export const as = (token: string) => createClient({ baseUrl: env.url, token: () => token });

/** Poll until `check` gives a value (a loaded 2-core machine: a generous deadline). */
export async function eventually<T>(what: string, check: () => Promise<T | undefined | null | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
