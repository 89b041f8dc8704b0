#pragma once
/// @file efcomm.hpp
/// Umbrella header of the efcomm C++ API.

#include "efcomm/build_info.hpp"
#include "efcomm/comm.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/config.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/health.hpp"
#include "efcomm/message.hpp"
#include "efcomm/mpi.hpp"
#include "efcomm/plan.hpp"
#include "efcomm/reducer.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"
