//! Query understanding and planning: free text to clauses (`understand`), clauses to a plan
//! (`plan`), query vectors (`embedder`), clip curation rules (`curate`) and as-you-type
//! completions (`suggest`).

pub mod curate;
pub mod embedder;
pub mod plan;
pub mod suggest;
pub mod understand;
