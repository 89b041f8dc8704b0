#pragma once
// Host collectives over an NCCL communicator (staged.cpp): NcclCommunicator::host().
#include <memory>

#include "efcomm/comm.hpp"

namespace efcomm {
class NcclCommunicator;
}  // namespace efcomm

namespace efcomm::comm {

/// A host Backend whose collectives copy their bytes into `communicator`'s device memory, run
/// its collective on the legacy default stream and copy the result back; abort aborts the
/// communicator. Small control messages only: every call synchronizes.
std::unique_ptr<Backend> ncclHostBackend(NcclCommunicator& communicator);

}  // namespace efcomm::comm
