/**
 * Writes the Prometheus Operator's `PrometheusRule` for sockeye from the
 * alert rules Prometheus loads in the compose stack
 * (`monitoring/prometheus/rules/sockeye.yml`), so the two never disagree
 * (`tests/kubernetes_test.ts` fails when the written file is stale).
 *
 *   deno task k8s:generate
 *
 * @module
 */
import { parse, stringify } from "yaml";

/** The rules file, relative to the repository root. */
export const RULES_FILE = "monitoring/prometheus/rules/sockeye.yml";

/** The generated manifest, relative to the repository root. */
export const RULE_MANIFEST =
  "deploy/kubernetes/components/monitoring/prometheusrule.yaml";

/**
 * Builds the `PrometheusRule` manifest from a Prometheus rules file.
 *
 * @param rulesYaml The rules file's text (`groups:` at the top).
 * @returns The manifest's text, with a header naming its source.
 * @throws {TypeError} When the file has no `groups` list.
 */
export function prometheusRule(rulesYaml: string): string {
  const rules = parse(rulesYaml) as { groups?: unknown };
  if (!Array.isArray(rules?.groups)) {
    throw new TypeError(`Cannot read ${RULES_FILE}: expected a groups list`);
  }
  const manifest = {
    apiVersion: "monitoring.coreos.com/v1",
    kind: "PrometheusRule",
    metadata: { name: "sockeye" },
    spec: { groups: rules.groups },
  };
  return `# Generated from ${RULES_FILE} by deploy/kubernetes/generate.ts\n` +
    "# (deno task k8s:generate): edit the rules there, not here.\n" +
    stringify(manifest, { lineWidth: 0 });
}

if (import.meta.main) {
  const root = new URL("../../", import.meta.url);
  const text = await Deno.readTextFile(new URL(RULES_FILE, root));
  await Deno.writeTextFile(new URL(RULE_MANIFEST, root), prometheusRule(text));
}
