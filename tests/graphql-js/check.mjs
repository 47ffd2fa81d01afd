// graphql-js (the reference implementation) against udm's GraphQL schema:
//   node check.mjs query            prints graphql-js's introspection query
//   node check.mjs schema < answer  builds a client schema from udm's introspection answer,
//                                   validates it, and validates documents against it;
//                                   prints a JSON report, exits 1 on any problem
import {
  getIntrospectionQuery, buildClientSchema, validateSchema, parse, validate, printSchema,
} from 'graphql';
import { readFileSync } from 'node:fs';

const mode = process.argv[2];
if (mode === 'query') {
  process.stdout.write(getIntrospectionQuery({ descriptions: true, specifiedByUrl: true, inputValueDeprecation: true }));
  process.exit(0);
}
const answer = JSON.parse(readFileSync(0, 'utf8'));
const report = { problems: [] };
if (answer.errors) report.problems.push({ introspection: answer.errors });
let schema;
try {
  schema = buildClientSchema(answer.data);
} catch (e) {
  report.problems.push({ buildClientSchema: String(e) });
}
if (schema) {
  const errors = validateSchema(schema);
  if (errors.length) report.problems.push({ validateSchema: errors.map(String) });
  report.types = Object.keys(schema.getTypeMap()).length;
  report.sdlBytes = printSchema(schema).length;
  // documents given after the answer's path: each must validate (or, named bad_*, must not)
  for (const file of process.argv.slice(3)) {
    const docs = JSON.parse(readFileSync(file, 'utf8'));
    for (const [name, text] of Object.entries(docs)) {
      let errs;
      try {
        errs = validate(schema, parse(text)).map(String);
      } catch (e) {
        errs = [String(e)];
      }
      const expectBad = name.startsWith('bad_');
      if (expectBad ? errs.length === 0 : errs.length > 0) {
        report.problems.push({ document: name, expected: expectBad ? 'invalid' : 'valid', errors: errs });
      }
    }
  }
}
process.stdout.write(JSON.stringify(report));
process.exit(report.problems.length ? 1 : 0);
