// Builds dist/tripwire.min.js from src/tripwire.js and enforces the size budget.
//   node build.mjs                write dist/tripwire.min.js and its copy in the Python package
//   node build.mjs --out FILE     write FILE instead
//   node build.mjs --check        fail when either committed copy differs from a fresh build
//   node build.mjs --budget N     use another budget (to see the build fail)
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const { version } = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));
const dist = join(here, "dist", "tripwire.min.js");
// The collector serves its own copy, so an installed wheel (no checkout beside it) has the tag.
const packaged = join(here, "..", "collector", "ingest", "static", "tripwire.min.js");
const committed = [
  [dist, "dist/tripwire.min.js"],
  [packaged, "collector/ingest/static/tripwire.min.js"],
];
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const out = option("--out", dist);
const BUDGET = Number(option("--budget", 2048)); // bytes, gzip -9

const { code } = await transform(readFileSync(join(here, "src", "tripwire.js"), "utf8"), {
  minify: true,
  target: "es2017",
  charset: "utf8",
  define: { VERSION: JSON.stringify(version) },
  banner: `/*! tripwire.js ${version} */`,
});
const built = Buffer.from(code);
// The budget is stated in `gzip -9` bytes; zlib (a few bytes apart) stands in where gzip is missing.
const cli = spawnSync("gzip", ["-9", "-c"], { input: built });
const gzipped = cli.status === 0 ? cli.stdout.length : gzipSync(built, { level: 9 }).length;
console.log(`tripwire.min.js: ${built.length} bytes raw, ${gzipped} bytes gzip -9 (budget ${BUDGET})`);

if (gzipped > BUDGET) {
  console.error(`over budget by ${gzipped - BUDGET} bytes`);
  process.exit(1);
}
if (args.includes("--check")) {
  for (const [file, name] of committed) {
    let current = Buffer.alloc(0);
    try {
      current = readFileSync(file);
    } catch {}
    if (!current.equals(built)) {
      console.error(`${name} is stale: run \`npm run build\` in tag/`);
      process.exit(1);
    }
  }
} else if (args.includes("--out")) {
  writeFileSync(out, built);
} else {
  for (const [file] of committed) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, built);
  }
}
