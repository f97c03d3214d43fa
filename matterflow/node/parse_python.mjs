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

// windmill-cli's own signature -> JSON Schema conversion (argSigToJsonSchemaType), taken from the pinned CLI bundle
// so that the schema written into .script.yaml is exactly what `wmill generate-metadata` would write.
function cliArgSigToJsonSchemaType() {
  const src = readFileSync(require.resolve("windmill-cli/esm/main.js"), "utf8");
  const start = src.indexOf("function argSigToJsonSchemaType(");
  const end = src.indexOf("var ITEMS_PRESERVED_FIELDS;", start);
  if (start < 0 || end < 0) throw new Error("argSigToJsonSchemaType not found in the windmill-cli bundle");
  return new Function(
    `const ITEMS_PRESERVED_FIELDS=["properties","required","additionalProperties","enum","resourceType","contentEncoding","description"];
${src.slice(start, end)}; return argSigToJsonSchemaType;`,
  )();
}

// Mirrors windmill-cli's inferSchema() for a script without previous metadata.
function toSchema(sig, convert) {
  const schema = { $schema: "https://json-schema.org/draft/2020-12/schema", type: "object", properties: {}, required: [] };
  if (sig.type === "Invalid") return schema;
  for (const arg of sig.args) {
    const property = { description: "", type: "" };
    convert(arg.typ, property);
    if (arg.otyp && arg.otyp.includes("[") && arg.otyp.includes("|")) property.originalType = arg.otyp;
    property.default = arg.default;
    schema.properties[arg.name] = property;
    if (!arg.has_default) schema.required.push(arg.name);
  }
  return JSON.parse(JSON.stringify(schema));
}

const convert = cliArgSigToJsonSchemaType();
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
  const signature = JSON.parse(parse_python(code));
  out[file] = { script_path: scriptPath, signature, schema: toSchema(signature, convert), relative_imports };
}
console.log(JSON.stringify(out));
