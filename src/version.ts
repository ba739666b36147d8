/** sockeye's release version (Semantic Versioning 2.0.0). */
export const VERSION = "0.1.0";
