/**
 * Metrics whose values are read from elsewhere at scrape time, rendered by
 * prom-client's registry through its public metric contract.
 *
 * prom-client's `Registry` (15.x) accepts any object with `name`, `help`,
 * `type`, `aggregator` and `get()` in `registerMetric()`, renders `get()`'s
 * samples in text 0.0.4 and OpenMetrics 1.0.0 with the registry's default
 * labels, and returns them from `getMetricsAsJSON()`. These collectors fill
 * that contract from plain numbers, so nothing on the hot path calls
 * prom-client and nothing here touches its internals.
 *
 * @module
 */
import type { Metric, Registry, RegistryContentType } from "prom-client";

/** One sample as the registry renders it (text, OpenMetrics and JSON). */
export interface Sample {
  /** Full sample name, e.g. `x_bucket`; the metric's name when absent. */
  readonly metricName?: string;
  /** The sample's own labels; the registry adds its default labels. */
  readonly labels: Record<string, string | number>;
  /**
   * Labels of the series the sample belongs to, written after the default
   * labels (as prom-client's histograms write theirs, after `le`).
   */
  readonly sharedLabels?: Record<string, string>;
  /** The value. */
  readonly value: number;
}

/** What `get()` answers: the shape prom-client's registry reads. */
export interface MetricData {
  /** Metric family name. */
  readonly name: string;
  /** `# HELP` text. */
  readonly help: string;
  /** `# TYPE`. */
  readonly type: "gauge" | "histogram";
  /** How prom-client's cluster aggregator merges workers. */
  readonly aggregator: "sum";
  /** The samples, in exposition order. */
  readonly values: Sample[];
}

/** Options every collector takes. */
export interface CollectorOptions {
  /** Metric family name (Prometheus naming: base units, `_seconds`, `_bytes`). */
  readonly name: string;
  /** `# HELP` text. */
  readonly help: string;
  /** Registries to register with. */
  readonly registers: readonly Registry<RegistryContentType>[];
}

/**
 * The part every collector shares: registration with the registries and
 * `get()`; subclasses say which samples to render.
 */
export abstract class Collector {
  /** Metric family name. */
  readonly name: string;
  /** `# HELP` text. */
  readonly help: string;
  /** `# TYPE`. */
  abstract readonly type: MetricData["type"];
  /** Cluster aggregation, as prom-client's own metrics default to. */
  readonly aggregator = "sum";

  /**
   * Registers the collector.
   *
   * @param options Name, help and registries.
   */
  constructor(options: CollectorOptions) {
    this.name = options.name;
    this.help = options.help;
    for (const registry of options.registers) {
      // The typings accept only prom-client's classes; the registry itself
      // reads only the fields above (registry.js, 15.1.3).
      registry.registerMetric(this as unknown as Metric);
    }
  }

  /**
   * Reads the samples now, each with all its labels (what
   * `getMetricsAsJSON()` answers).
   *
   * @returns The metric family, series labels merged into each sample's.
   */
  get(): Promise<MetricData> {
    return Promise.resolve(this.#data(this.samples().map(splay)));
  }

  /**
   * Reads the samples now for the text formats, series labels apart (what
   * the registry renders, after the default labels).
   *
   * @returns The metric family as the registry renders it.
   */
  getForPromString(): Promise<MetricData> {
    return Promise.resolve(this.#data(this.samples()));
  }

  #data(values: Sample[]): MetricData {
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    };
  }

  /** Nothing to clear: the figures belong to their source (`Registry.resetMetrics()` calls this). */
  reset(): void {}

  /**
   * Reads the source now.
   *
   * @returns The samples to render, in exposition order.
   */
  protected abstract samples(): Sample[];
}

/** Options for {@link CollectedGauge}. */
export interface CollectedGaugeOptions extends CollectorOptions {
  /**
   * Reads the value at scrape time.
   *
   * @returns The value, or `undefined` when it cannot be known now (the
   *   family then has no sample, rather than a false 0).
   */
  read(): number | undefined;
}

/**
 * An unlabelled gauge read at scrape time, with no sample while its source
 * cannot be read.
 *
 * @example
 * ```ts
 * import { Registry } from "prom-client";
 * import { CollectedGauge } from "./collector.ts";
 * const registry = new Registry();
 * new CollectedGauge({
 *   name: "example_answer",
 *   help: "Always 42.",
 *   registers: [registry],
 *   read: () => 42,
 * });
 * ```
 */
export class CollectedGauge extends Collector {
  /** `# TYPE gauge`. */
  readonly type = "gauge";
  #read: () => number | undefined;

  /**
   * Creates the gauge and registers it.
   *
   * @param options Name, help, registries and the reader.
   */
  constructor(options: CollectedGaugeOptions) {
    super(options);
    this.#read = options.read;
  }

  /**
   * Reads the gauge's source.
   *
   * @returns One sample, or none while the source cannot be read.
   */
  protected samples(): Sample[] {
    const value = this.#read();
    return value === undefined ? [] : [{ labels: {}, value }];
  }
}

/** A histogram's figures as plain numbers. */
export interface HistogramFigures {
  /**
   * Observations per bucket, not cumulative: one slot per upper bound, then
   * one for +Inf.
   */
  readonly counts: ArrayLike<number>;
  /** Sum of the observed values. */
  readonly sum: number;
  /** Number of observations. */
  readonly count: number;
}

/** Options for {@link CollectedHistogram}. */
export interface CollectedHistogramOptions extends CollectorOptions {
  /** Upper bounds, ascending, without +Inf. */
  readonly buckets: readonly number[];
  /**
   * Reads the figures at scrape time.
   *
   * @returns The current counts, sum and count.
   */
  read(): HistogramFigures;
}

/**
 * An unlabelled histogram read at scrape time from counts kept elsewhere:
 * cumulative `_bucket{le}` samples, `le="+Inf"`, `_sum` and `_count`, as
 * prom-client's own `Histogram` renders them.
 *
 * @example
 * ```ts
 * import { Registry } from "prom-client";
 * import { CollectedHistogram } from "./collector.ts";
 * const registry = new Registry();
 * new CollectedHistogram({
 *   name: "example_duration_seconds",
 *   help: "Two fast, one slow.",
 *   buckets: [0.1, 1],
 *   registers: [registry],
 *   read: () => ({ counts: [2, 0, 1], sum: 2.1, count: 3 }),
 * });
 * ```
 */
export class CollectedHistogram extends Collector {
  /** `# TYPE histogram`. */
  readonly type = "histogram";
  #buckets: readonly number[];
  #read: () => HistogramFigures;

  /**
   * Creates the histogram and registers it.
   *
   * @param options Name, help, bounds, registries and the reader.
   */
  constructor(options: CollectedHistogramOptions) {
    super(options);
    this.#buckets = options.buckets;
    this.#read = options.read;
  }

  /**
   * Reads the figures and makes them cumulative.
   *
   * @returns Each bucket, +Inf, `_sum` and `_count`.
   */
  protected samples(): Sample[] {
    // One synchronous read: the source cannot change half-way.
    return histogramSamples(this.name, this.#buckets, this.#read(), []);
  }
}

/** A histogram's figures for one set of labels. */
export interface LabelledHistogramFigures extends HistogramFigures {
  /** The series' labels, e.g. `{method: "GET", endpoint: "/healthz"}`. */
  readonly labels: Record<string, string>;
}

/** Options for {@link CollectedHistogramFamily}. */
export interface CollectedHistogramFamilyOptions extends CollectorOptions {
  /** Upper bounds, ascending, without +Inf. */
  readonly buckets: readonly number[];
  /**
   * Reads every series at scrape time.
   *
   * @returns The series, each with its labels; bounded by the source.
   */
  read(): Iterable<LabelledHistogramFigures>;
}

/**
 * A labelled histogram read at scrape time, rendered series by series as
 * prom-client's own `Histogram` renders a labelled one (`le` first, then the
 * default labels, then the series' labels).
 *
 * @example
 * ```ts
 * import { Registry } from "prom-client";
 * import { CollectedHistogramFamily } from "./collector.ts";
 * const registry = new Registry();
 * new CollectedHistogramFamily({
 *   name: "example_request_duration_seconds",
 *   help: "One fast request.",
 *   buckets: [0.1, 1],
 *   registers: [registry],
 *   read: () => [{ labels: { route: "/" }, counts: [1, 0, 0], sum: 0.01, count: 1 }],
 * });
 * ```
 */
export class CollectedHistogramFamily extends Collector {
  /** `# TYPE histogram`. */
  readonly type = "histogram";
  #buckets: readonly number[];
  #read: () => Iterable<LabelledHistogramFigures>;

  /**
   * Creates the histogram and registers it.
   *
   * @param options Name, help, bounds, registries and the reader.
   */
  constructor(options: CollectedHistogramFamilyOptions) {
    super(options);
    this.#buckets = options.buckets;
    this.#read = options.read;
  }

  /**
   * Reads every series and makes each cumulative.
   *
   * @returns Each series' buckets, +Inf, `_sum` and `_count`, in turn.
   */
  protected samples(): Sample[] {
    const samples: Sample[] = [];
    for (const figures of this.#read()) {
      histogramSamples(this.name, this.#buckets, figures, samples);
    }
    return samples;
  }
}

/** A sample with its series' labels merged in, as prom-client's JSON has it. */
function splay(sample: Sample): Sample {
  const { sharedLabels, ...rest } = sample;
  return sharedLabels === undefined
    ? sample
    : { ...rest, labels: { ...rest.labels, ...sharedLabels } };
}

/**
 * Appends one series' samples: cumulative `_bucket{le}`, `le="+Inf"`,
 * `_sum` and `_count`.
 */
function histogramSamples(
  name: string,
  buckets: readonly number[],
  figures: HistogramFigures & { readonly labels?: Record<string, string> },
  samples: Sample[],
): Sample[] {
  const { counts, sum, count, labels } = figures;
  // Unlabelled, a sample has no series labels at all, as prom-client's.
  const shared = labels === undefined ? {} : { sharedLabels: labels };
  const bucket = `${name}_bucket`;
  let cumulative = 0;
  buckets.forEach((le, i) => {
    cumulative += counts[i]!;
    samples.push({
      metricName: bucket,
      labels: { le },
      ...shared,
      value: cumulative,
    });
  });
  samples.push(
    { metricName: bucket, labels: { le: "+Inf" }, ...shared, value: count },
    { metricName: `${name}_sum`, labels: {}, ...shared, value: sum },
    { metricName: `${name}_count`, labels: {}, ...shared, value: count },
  );
  return samples;
}
