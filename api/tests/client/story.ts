// One user story through a client generated from the api's served /openapi.json
// (openapi-typescript types + openapi-fetch): the TypeScript compiler checks every request and
// response of it against the document, and running it checks the document against the api.
//
// Usage: node build/dist/story.js <api-url> <owner-token> <other-user-name>
import createClient from "openapi-fetch";
import type { components, paths } from "./build/api.js";

type Session = components["schemas"]["AgenticSession"];

const [url, token, otherUser] = process.argv.slice(2);
if (!url || !token || !otherUser) {
  throw new Error("usage: story.js <api-url> <owner-token> <other-user-name>");
}

const api = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${token}` } });

function fail(step: string, detail: unknown): never {
  throw new Error(`${step}: ${JSON.stringify(detail)}`);
}

function step(name: string) {
  console.log(`==> ${name}`);
}

const suffix = Date.now().toString(36);
const project = `client-story-${suffix}`;

step(`create project ${project}`);
{
  const { data, error, response } = await api.POST("/api/projects", {
    body: { name: project, displayName: "Generated client story" },
  });
  if (error || !data) fail("create project", { status: response.status, error });
  // 201 (applied) answers the project; 202 (accepted) the command: both are typed.
  if (response.status === 201 && "name" in data && data.name !== project) fail("create project", data);
}

// A project created by a command becomes visible when it is applied.
async function eventually<T>(what: string, f: () => Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 120; i++) {
    const v = await f();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 500));
  }
  return fail(what, "timed out");
}

await eventually("project visible", async () => {
  const { data } = await api.GET("/api/projects/{project}", { params: { path: { project } } });
  return data?.name === project ? data : undefined;
});

step("create a session");
let sessionName: string;
{
  const { data, error, response } = await api.POST("/api/projects/{project}/agentic-sessions", {
    params: { path: { project } },
    body: { prompt: "Summarise the README", displayName: "Story", timeout: 600 },
  });
  if (error || !data) fail("create session", { status: response.status, error });
  sessionName = data.name ?? fail("create session", data);
}

step(`watch ${sessionName} to Completed (server-sent events)`);
{
  const res = await fetch(`${url}/api/projects/${project}/agentic-sessions/${sessionName}/events`, {
    headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
  });
  if (!res.ok || !res.body) fail("open event stream", res.status);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let phase = "";
  const deadline = Date.now() + 180_000;
  while (phase !== "Completed") {
    if (Date.now() > deadline) fail("watch", `still ${phase || "without a phase"}`);
    const { value, done } = await reader.read();
    if (done) fail("watch", "stream ended");
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim())
        .join("\n");
      if (!data) continue;
      const ev = JSON.parse(data) as { type?: string; data?: { phase?: string; toPhase?: string } };
      const p = ev.data?.phase ?? ev.data?.toPhase;
      if (p && p !== phase) {
        phase = p;
        console.log(`    phase ${phase}`);
        if (phase === "Failed" || phase === "Error") fail("watch", ev);
      }
    }
  }
  await reader.cancel();
}

step("read the session back");
{
  const { data, error } = await api.GET("/api/projects/{project}/agentic-sessions/{session}", {
    params: { path: { project, session: sessionName } },
  });
  if (error || !data) fail("get session", error);
  const s: Session = data;
  if (s.status?.phase !== "Completed") fail("get session", s.status);
}

step(`grant ${otherUser} view`);
{
  const { error, response } = await api.POST("/api/projects/{project}/permissions", {
    params: { path: { project } },
    body: { subjectType: "user", subjectName: otherUser, role: "view" },
  });
  if (error) fail("grant", { status: response.status, error });
  const rows = await eventually("grant listed", async () => {
    const { data } = await api.GET("/api/projects/{project}/permissions", { params: { path: { project } } });
    return data?.items.some((r) => r.subjectName === otherUser && r.role === "view" && !r.pending) ? data : undefined;
  });
  console.log(`    ${rows.items.length} permissions`);
}

step("create an access key and use it");
{
  const { data, error, response } = await api.POST("/api/projects/{project}/keys", {
    params: { path: { project } },
    body: { name: "story-bot", role: "view" },
  });
  if (error || !data) fail("create key", { status: response.status, error });
  if (response.status !== 201 || !("key" in data)) fail("create key", data);
  const bot = createClient<paths>({ baseUrl: url, headers: { Authorization: `Bearer ${data.key}` } });
  const listed = await eventually("the key reads sessions", async () => {
    const { data: page } = await bot.GET("/api/projects/{project}/agentic-sessions", {
      params: { path: { project }, query: { limit: 10 } },
    });
    return page?.items.some((s) => s.metadata.name === sessionName) ? page : undefined;
  });
  console.log(`    the key sees ${listed.total} session(s)`);
  const denied = await bot.DELETE("/api/projects/{project}/agentic-sessions/{session}", {
    params: { path: { project, session: sessionName } },
  });
  if (denied.response.status !== 403 || !denied.error?.error) fail("a view key deletes", denied.response.status);
  console.log(`    a view key may not delete: ${denied.error.error}`);
}

step(`delete project ${project}`);
{
  const { error, response } = await api.DELETE("/api/projects/{project}", { params: { path: { project } } });
  if (error) fail("delete project", { status: response.status, error });
}
console.log("story complete");
