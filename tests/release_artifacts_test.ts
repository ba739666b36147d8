/**
 * The release workflow, read statically: a version tag builds the binary
 * for the five platforms with the flags `deno task compile` uses, publishes
 * SHA256SUMS, and pushes a multi-arch image whose OCI labels the Dockerfile
 * sets from build arguments; the README's install section names it all.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";
import { ROOT } from "./_helpers.ts";

// deno-lint-ignore no-explicit-any -- a parsed workflow, checked field by field
type Workflow = any;

const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
];

const OCI = ["source", "version", "revision"];

async function workflow(): Promise<Workflow> {
  return parse(
    await Deno.readTextFile(`${ROOT}.github/workflows/release.yml`),
  );
}

function steps(job: Workflow): string {
  return (job.steps as Workflow[]).map((s) => s.run ?? "").join("\n");
}

Deno.test("release: version tags compile the five targets with deno task compile's flags, and publish SHA256SUMS", async () => {
  const wf = await workflow();
  assert.deepEqual(wf.on, { push: { tags: ["v*.*.*"] } });
  const matrix = wf.jobs.binaries.strategy.matrix.include as Workflow[];
  assert.deepEqual(matrix.map((m) => m.target).sort(), [...TARGETS].sort());
  assert.equal(new Set(matrix.map((m) => m.file)).size, TARGETS.length);
  const compile = steps(wf.jobs.binaries);
  assert.match(compile, /deno compile .*--target \$\{\{ matrix\.target \}\}/);
  // The same permissions as the task that builds dist/sockeye.
  const task = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`))
    .tasks.compile as string;
  for (const flag of task.split(" ").filter((f) => f.startsWith("--allow"))) {
    assert.ok(compile.includes(flag), `the workflow compiles with ${flag}`);
  }
  const release = steps(wf.jobs.release);
  assert.match(release, /sha256sum sockeye-\* > SHA256SUMS/);
  assert.match(release, /gh release create .*dist\/\*/);
  assert.deepEqual(wf.jobs.release.needs, "binaries");
});

Deno.test("release: a linux/amd64 + linux/arm64 image to GHCR, with OCI labels from the Dockerfile's build arguments", async () => {
  const wf = await workflow();
  const image = wf.jobs.image;
  const build = (image.steps as Workflow[]).find((s) =>
    String(s.uses).startsWith("docker/build-push-action@")
  );
  assert.deepEqual(
    build.with.platforms.split(",").sort(),
    ["linux/amd64", "linux/arm64"],
  );
  assert.equal(build.with.push, true);
  const meta = (image.steps as Workflow[]).find((s) =>
    String(s.uses).startsWith("docker/metadata-action@")
  );
  assert.match(meta.with.images, /^ghcr\.io\//);
  assert.equal(image.permissions.packages, "write");
  const args = Object.fromEntries(
    (build.with["build-args"] as string).trim().split("\n").map((l) =>
      l.split("=", 2)
    ),
  );
  assert.deepEqual(Object.keys(args).sort(), ["REVISION", "SOURCE", "VERSION"]);
  assert.equal(args.REVISION, "${{ github.sha }}");

  const dockerfile = await Deno.readTextFile(`${ROOT}Dockerfile`);
  const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  for (const arg of Object.keys(args)) {
    assert.match(final, new RegExp(`^ARG ${arg}=`, "m"), arg);
  }
  for (const key of OCI) {
    assert.match(
      final,
      new RegExp(
        `org\\.opencontainers\\.image\\.${key}="\\$${key.toUpperCase()}"`,
      ),
      key,
    );
  }
  // Cross-compiled per platform: no emulation in the build stage.
  assert.match(dockerfile, /^FROM --platform=\$BUILDPLATFORM /m);
  assert.match(dockerfile, /deno compile [^\n]*--target "\$target"/);
});

Deno.test("README's install section names every release file and the image", async () => {
  const wf = await workflow();
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const install = readme.slice(readme.indexOf("\n## Install\n")).split(
    /\n## /,
  )[1]!;
  assert.ok(install, "README has an Install section");
  for (const m of wf.jobs.binaries.strategy.matrix.include as Workflow[]) {
    assert.ok(install.includes(m.file), m.file);
  }
  assert.ok(install.includes("SHA256SUMS"));
  assert.match(install, /ghcr\.io\/[^\s`]+/);
  assert.match(install, /linux\/arm64/);
});
