/**
 * A tiny binary-layout description language. Every structure shared between
 * the VMM (TypeScript) and guest code (C) is declared once with `defineStruct`;
 * the C header is generated from these declarations (scripts/gen-abi-header.ts)
 * and carries _Static_assert checks, so both sides agree by construction.
 */

export type ScalarType = "u8" | "u16" | "u32" | "u64";

export interface FieldSpec {
  readonly name: string;
  /** A scalar, or a nested struct. */
  readonly type: ScalarType | StructLayout;
  /** Array length; 1 for a scalar. */
  readonly count?: number;
  readonly doc?: string;
}

export interface Field {
  readonly name: string;
  readonly type: ScalarType | StructLayout;
  readonly count: number;
  readonly offset: number;
  readonly size: number;
  readonly doc: string | undefined;
}

export interface StructLayout {
  readonly cName: string;
  readonly doc: string;
  readonly size: number;
  /** The largest member alignment. */
  readonly align: number;
  readonly fields: readonly Field[];
  readonly byName: ReadonlyMap<string, Field>;
  /** Offset of a named field; throws on an unknown name (a programming error). */
  offset(name: string): number;
}

export const SCALAR_SIZE: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

/**
 * Lay out fields with natural alignment (as a C compiler does on x86-64) and
 * round the total size up to the largest alignment.
 */
export function defineStruct(cName: string, doc: string, specs: readonly FieldSpec[]): StructLayout {
  let offset = 0;
  let maxAlign = 1;
  const fields: Field[] = [];
  for (const s of specs) {
    const elem = typeof s.type === "string" ? SCALAR_SIZE[s.type] : s.type.size;
    const align = typeof s.type === "string" ? elem : s.type.align;
    const count = s.count ?? 1;
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`${cName}.${s.name}: bad count`);
    offset = alignUp(offset, align);
    maxAlign = Math.max(maxAlign, align);
    fields.push({ name: s.name, type: s.type, count, offset, size: elem * count, doc: s.doc });
    offset += elem * count;
  }
  const size = alignUp(offset, maxAlign);
  const byName = new Map(fields.map((f) => [f.name, f]));
  if (byName.size !== fields.length) throw new RangeError(`${cName}: duplicate field name`);
  return {
    cName,
    doc,
    size,
    align: maxAlign,
    fields,
    byName,
    offset(name: string): number {
      const f = byName.get(name);
      if (!f) throw new RangeError(`${cName} has no field ${name}`);
      return f.offset;
    },
  };
}

export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/** Read a scalar field of `layout` from `view` at `base`. u64 fields are returned as bigint. */
export function readField(view: DataView, base: number, layout: StructLayout, name: string): number | bigint {
  const f = layout.byName.get(name);
  if (!f || typeof f.type !== "string") throw new RangeError(`${layout.cName} has no scalar field ${name}`);
  return readScalar(view, base + f.offset, f.type);
}

export function readScalar(view: DataView, at: number, type: ScalarType): number | bigint {
  switch (type) {
    case "u8":
      return view.getUint8(at);
    case "u16":
      return view.getUint16(at, true);
    case "u32":
      return view.getUint32(at, true);
    case "u64":
      return view.getBigUint64(at, true);
  }
}

export function writeScalar(view: DataView, at: number, type: ScalarType, value: number | bigint): void {
  switch (type) {
    case "u8":
      view.setUint8(at, Number(value));
      return;
    case "u16":
      view.setUint16(at, Number(value), true);
      return;
    case "u32":
      view.setUint32(at, Number(value), true);
      return;
    case "u64":
      view.setBigUint64(at, BigInt.asUintN(64, BigInt(value)), true);
      return;
  }
}
