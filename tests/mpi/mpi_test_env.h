// Shared pieces of the MPI tests. test_mpi runs in two ways:
//  - under mpirun (ctest launches `mpirun -np N test_mpi --gtest_filter=...`): main()
//    initialises MPI once (mpi_test_context()) and every rank runs the same tests; only
//    rank 0 prints gtest's report, every rank's failures set the exit status;
//  - directly (the RankFailure tests): no MPI here; the tests launch mpirun themselves on a
//    fault mode of this binary and check how the job ends.
#pragma once
#include <string>

#include "app/config.h"
#include "common/mpi/mpi_context.h"

namespace fedtl::mpitest {

// The process's MPI context, or null when not started by mpirun.
common::mpi::MpiContext* mpi_test_context();

// A directory shared by the ranks of this mpirun (created by rank 0; collective).
std::string shared_test_dir();

// The small job of the e2e tests (3 sites, 2 rounds, 100 labels per site, a random built-in
// CNN written by rank 0 as the backbone) with its outputs in dir/out_name. Collective.
app::JobConfig small_mpi_job(const std::string& out_name, int sites = 3);

bool have_fashion_mnist();

}  // namespace fedtl::mpitest
