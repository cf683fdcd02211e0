/**
 * A node:test reporter that writes the run's totals as one JSON object
 * ({tests, pass, fail, skipped, todo, cancelled, suites}) for scripts/test.ts,
 * which adds up the host and KVM runs into one closing line.
 */
const KEYS = ["tests", "suites", "pass", "fail", "cancelled", "skipped", "todo"] as const;

interface TestEvent {
  type: string;
  data: { message?: string; nesting?: number };
}

export default async function* countReporter(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const totals: Record<string, number> = {};
  for await (const ev of source) {
    if (ev.type !== "test:diagnostic" || ev.data.nesting !== 0) continue;
    const m = /^(\w+) (\d+)$/.exec(ev.data.message ?? "");
    if (m && (KEYS as readonly string[]).includes(m[1]!)) totals[m[1]!] = Number(m[2]);
  }
  yield `${JSON.stringify(totals)}\n`;
}
