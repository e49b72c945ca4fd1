//! Energy meters (RAPL, INA3221, tegrastats), Chrome trace JSON, profile summaries and plots.
