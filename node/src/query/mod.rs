//! Query understanding and planning: free text to clauses (`understand`), clauses to a plan
//! (`plan`, with the cluster's vocabularies: `planner`), query vectors (`embedder`), clip curation rules (`curate`) and as-you-type
//! completions (`suggest`).

pub mod curate;
pub mod embedder;
pub mod plan;
pub mod planner;
pub mod suggest;
pub mod understand;
