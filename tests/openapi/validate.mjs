// Validates an OpenAPI 3.1 document of udm (udm_openapi()) for tests/tests/openapi.rs:
//
//   node validate.mjs <document.json> [<records.json>]
//
// 1. @apidevtools/swagger-parser validates it against the OpenAPI 3.1 schema and resolves every
//    $ref;
// 2. what the OpenAPI schema cannot say: operationIds unique, every {param} of a path template
//    declared as a required path parameter and no other, no parameter twice in an operation;
// 3. every component schema compiles with Ajv as JSON Schema 2020-12, strictly (unknown keywords
//    other than udm's x- extensions, invalid patterns or formats are errors);
// 4. records.json, {"<component>": [value, ...]}: each value is valid against that component
//    (records as udm returns them, against the schema that describes them).
//
// Prints {"valid": true, ...} and exits 0, or prints the problems and exits 1.

import SwaggerParser from "@apidevtools/swagger-parser";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { readFileSync } from "node:fs";

const [docPath, recordsPath] = process.argv.slice(2);
if (!docPath) {
  console.error("usage: node validate.mjs <document.json> [<records.json>]");
  process.exit(2);
}
const doc = JSON.parse(readFileSync(docPath, "utf8"));
const problems = [];

// 1. the OpenAPI schema, and $refs
try {
  await SwaggerParser.validate(docPath);
} catch (e) {
  problems.push(`swagger-parser: ${e.message}`);
}

// 2. operations
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
const resolve = (p) => {
  if (p && typeof p.$ref === "string") {
    const parts = p.$ref.replace(/^#\//, "").split("/");
    let v = doc;
    for (const k of parts) v = v?.[k];
    return v;
  }
  return p;
};
const ids = new Map();
let operations = 0;
for (const [path, item] of Object.entries(doc.paths ?? {})) {
  const template = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
  for (const m of METHODS) {
    const op = item?.[m];
    if (!op) continue;
    operations++;
    const where = `${m.toUpperCase()} ${path}`;
    if (ids.has(op.operationId)) {
      problems.push(`operationId ${op.operationId} of ${where} is also ${ids.get(op.operationId)}'s`);
    }
    ids.set(op.operationId, where);
    const params = [...(item.parameters ?? []), ...(op.parameters ?? [])].map(resolve);
    const seen = new Set();
    for (const p of params) {
      if (!p) {
        problems.push(`${where}: a parameter's $ref does not resolve`);
        continue;
      }
      const key = `${p.in}:${p.name}`;
      if (seen.has(key)) problems.push(`${where}: parameter ${key} twice`);
      seen.add(key);
      if (p.in === "path" && p.required !== true) problems.push(`${where}: path parameter ${p.name} not required`);
    }
    const declared = params.filter((p) => p?.in === "path").map((p) => p.name).sort();
    if (JSON.stringify(declared) !== JSON.stringify(template)) {
      problems.push(`${where}: path parameters ${JSON.stringify(declared)}, template ${JSON.stringify(template)}`);
    }
  }
}

// 3. component schemas as JSON Schema 2020-12
const ajv = new Ajv2020({ strict: true, allErrors: true, validateFormats: true });
addFormats(ajv);
const udmKeywords = new Set();
JSON.stringify(doc.components?.schemas ?? {}, (k, v) => {
  if (typeof k === "string" && k.startsWith("x-udm-")) udmKeywords.add(k);
  return v;
});
for (const k of udmKeywords) ajv.addKeyword({ keyword: k });
ajv.addKeyword({ keyword: "components" });
const ROOT = "udm:openapi";
try {
  ajv.addSchema({ $id: ROOT, components: { schemas: doc.components?.schemas ?? {} } });
} catch (e) {
  problems.push(`component schemas: ${e.message}`);
}
const validators = {};
for (const name of Object.keys(doc.components?.schemas ?? {})) {
  try {
    validators[name] = ajv.getSchema(`${ROOT}#/components/schemas/${name}`);
    if (!validators[name]) problems.push(`schema ${name} does not compile`);
  } catch (e) {
    problems.push(`schema ${name}: ${e.message}`);
  }
}

// 4. values against their schemas
let checked = 0;
if (recordsPath) {
  const records = JSON.parse(readFileSync(recordsPath, "utf8"));
  for (const [name, values] of Object.entries(records)) {
    const v = validators[name];
    if (!v) {
      problems.push(`no schema ${name} to check values against`);
      continue;
    }
    values.forEach((value, i) => {
      checked++;
      if (!v(value)) {
        problems.push(`${name}[${i}] ${JSON.stringify(value)}: ${ajv.errorsText(v.errors)}`);
      }
    });
  }
}

if (problems.length) {
  console.log(problems.join("\n"));
  process.exit(1);
}
console.log(JSON.stringify({
  valid: true,
  paths: Object.keys(doc.paths ?? {}).length,
  operations,
  schemas: Object.keys(validators).length,
  values: checked,
}));
