#include "protocols/secagg/wire.h"

namespace fedtl::protocols::secagg {

const char* frame_name(uint16_t type) {
  switch (type) {
    case kFrameKeys: return "SecAggKeys";
    case kFrameKeyList: return "SecAggKeyList";
    case kFrameShares: return "SecAggShares";
    case kFrameShareList: return "SecAggShareList";
    case kFrameMasked: return "SecAggMasked";
    case kFrameUnmaskRequest: return "SecAggUnmaskRequest";
    case kFrameUnmaskShares: return "SecAggUnmaskShares";
    case kFrameAbort: return "SecAggAbort";
    case kFrameConsistency: return "SecAggConsistency";
    case kFrameConsistencyList: return "SecAggConsistencyList";
    default: return nullptr;
  }
}

}  // namespace fedtl::protocols::secagg
