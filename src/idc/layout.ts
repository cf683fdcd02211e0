/**
 * Where everything lives in the IDC region: the header, then one block per
 * guest (ring control, request slots, response slots, rule table). Offsets
 * are written into the header and each block, so the health VM reads them
 * instead of recomputing them.
 */
import {
  ABI_CONSTANTS as C,
  IDC_GUEST_CTL,
  IDC_HEADER,
  IDC_REQUEST,
  IDC_RESPONSE,
  RULE,
  RULE_TABLE_HEADER,
} from "../abi/guest-abi.js";
import { alignUp } from "../abi/layout.js";
import { configError } from "../errors.js";

export interface IdcLayout {
  readonly size: number;
  readonly nguests: number;
  readonly nslots: number;
  readonly blockOffset: number;
  readonly blockSize: number;
  /** Offsets inside a guest block. */
  readonly reqOffset: number;
  readonly respOffset: number;
  readonly rulesOffset: number;
  readonly rulesSize: number;
}

export function idcLayout(nguests: number, nslots: number = C.IDC_SLOTS): IdcLayout {
  if (!Number.isInteger(nguests) || nguests < 1 || nguests > C.IDC_MAX_GUESTS) {
    throw configError("--guests", `${nguests} guests; one health VM serves 1 to ${C.IDC_MAX_GUESTS}`);
  }
  if (!Number.isInteger(nslots) || nslots < 2 || (nslots & (nslots - 1)) !== 0 || nslots > 1024) {
    throw configError("idc.slots", "must be a power of two from 2 to 1024");
  }
  if (IDC_HEADER.size > C.IDC_HEADER_SIZE) throw configError("idc", "header does not fit");
  const reqOffset = alignUp(IDC_GUEST_CTL.size, 64);
  const respOffset = alignUp(reqOffset + nslots * IDC_REQUEST.size, 64);
  const rulesOffset = alignUp(respOffset + nslots * IDC_RESPONSE.size, 64);
  const rulesSize = RULE_TABLE_HEADER.size + C.RULES_MAX * RULE.size;
  const blockSize = alignUp(rulesOffset + rulesSize, 4096);
  const blockOffset = C.IDC_HEADER_SIZE;
  const size = alignUp(blockOffset + nguests * blockSize, 2 * 1024 * 1024);
  return { size, nguests, nslots, blockOffset, blockSize, reqOffset, respOffset, rulesOffset, rulesSize };
}
