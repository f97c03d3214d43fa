// Windmill's own Python parser (npm windmill-parser-wasm-py, the one the Windmill server and CLI use) and its
// relative-import resolver, over the files named on the command line.
// Usage: node parse_python.mjs <repo-root> <file.py>...  ->  {"<file.py>": {"signature": {...}, "relative_imports": [...]}}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [root, ...files] = process.argv.slice(2);
if (!root || files.length === 0) {
  console.error("usage: node parse_python.mjs <repo-root> <file.py>...");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(root), "package.json"));

// The packages are wasm-bindgen "web" builds: their default init() fetch()es the .wasm, which Node cannot do
// for file: URLs, so hand them the bytes (as windmill-cli does).
async function load(pkg) {
  const mod = await import(require.resolve(pkg));
  mod.initSync({ module: readFileSync(require.resolve(`${pkg}/windmill_parser_wasm_bg.wasm`)) });
  return mod;
}

const { parse_python } = await load("windmill-parser-wasm-py");
const { parse_py_relative_imports } = await load("windmill-parser-wasm-py-imports");
const out = {};
for (const file of files) {
  const code = readFileSync(file, "utf8");
  const scriptPath = path.relative(path.resolve(root), path.resolve(file)).replace(/\.py$/, "");
  let relative_imports = null;
  try {
    relative_imports = parse_py_relative_imports(code, scriptPath);
  } catch (err) {
    relative_imports = { error: String(err) };
  }
  out[file] = { script_path: scriptPath, signature: JSON.parse(parse_python(code)), relative_imports };
}
console.log(JSON.stringify(out));
