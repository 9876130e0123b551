// The declarations and the module export the same values, checked both ways by tsc:
//   node types-test/check-exports.mjs [package-dir]
// It imports the module, lists its runtime exports, and compiles (in a temporary consumer
// project that installs the package by a symlink) an object literal typed as "one key per
// declared value export" holding one key per runtime export. A runtime export that is not
// declared is an excess property; a declared value that the module lacks is a missing one.
import { spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const packageDir = resolve(process.argv[2] ?? join(here, ".."));
const manifest = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8"));
const entry = manifest.exports["."].default;
const runtime = Object.keys(await import(pathToFileURL(join(packageDir, entry)).href)).sort();

const project = mkdtempSync(join(tmpdir(), "rs-exports-"));
try {
  mkdirSync(join(project, "node_modules"));
  symlinkSync(packageDir, join(project, "node_modules", manifest.name), "dir");
  writeFileSync(join(project, "package.json"), JSON.stringify({ type: "module", private: true }));
  writeFileSync(
    join(project, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        module: "nodenext",
        moduleResolution: "nodenext",
        target: "es2022",
        lib: ["es2022", "dom"],
        types: [],
        noEmit: true,
      },
      files: ["exports.mts"],
    }),
  );
  const keys = runtime.map((name) => `  ${JSON.stringify(name)}: true,`).join("\n");
  writeFileSync(
    join(project, "exports.mts"),
    `import * as declared from ${JSON.stringify(manifest.name)};\n` +
      `export const runtimeExports: { readonly [K in keyof typeof declared]: true } = {\n${keys}\n};\n`,
  );
  const tsc = join(packageDir, "node_modules", "typescript", "bin", "tsc");
  const result = spawnSync(process.execPath, [tsc, "-p", ".", "--pretty", "false"], { cwd: project, encoding: "utf8" });
  if (result.status !== 0) {
    console.error(`declarations and module disagree (runtime exports: ${runtime.join(", ")}):`);
    console.error(result.stdout + result.stderr);
    process.exit(1);
  }
  console.log(`declared and exported alike: ${runtime.join(", ")}`);
} finally {
  rmSync(project, { recursive: true, force: true });
}
