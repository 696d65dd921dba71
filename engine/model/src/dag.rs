//! The step graph: which step waits for which.

use crate::Pipeline;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

/// The DAG of a validated pipeline. Node `i` is the `i`-th step in file
/// order; an edge `a -> b` means `b` needs `a`.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<String, ()>,
}

impl Dag {
    /// Builds the DAG. `needs` naming unknown steps are ignored here;
    /// validation reports them.
    pub fn new(pipeline: &Pipeline) -> Self {
        let names: Vec<&str> = pipeline.steps.keys().map(String::as_str).collect();
        Self::from_edges(
            &names,
            pipeline
                .steps
                .iter()
                .flat_map(|(name, step)| step.needs.iter().map(move |need| (need.as_str(), name.as_str()))),
        )
    }

    pub(crate) fn from_edges<'a>(names: &[&str], edges: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut graph = DiGraph::new();
        for name in names {
            graph.add_node((*name).to_owned());
        }
        let index = |n: &str| names.iter().position(|m| *m == n).map(NodeIndex::new);
        for (from, to) in edges {
            if let (Some(a), Some(b)) = (index(from), index(to)) {
                graph.update_edge(a, b, ());
            }
        }
        Self { graph }
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the pipeline has no steps.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// The name of step `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.graph[NodeIndex::new(i)]
    }

    /// The index of the step called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.graph.node_indices().find(|i| self.graph[*i] == name).map(|i| i.index())
    }

    /// Direct prerequisites of step `i`.
    pub fn needs(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph.neighbors_directed(NodeIndex::new(i), Direction::Incoming).map(|n| n.index())
    }

    /// Steps that directly need step `i`.
    pub fn dependants(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing).map(|n| n.index())
    }

    /// Every step that `i` transitively needs (not including `i`).
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let reversed = Reversed(&self.graph);
        let mut dfs = Dfs::new(reversed, NodeIndex::new(i));
        let mut out = Vec::new();
        while let Some(n) = dfs.next(reversed) {
            if n.index() != i {
                out.push(n.index());
            }
        }
        out.sort_unstable();
        out
    }

    /// Every step that transitively needs `i` (not including `i`).
    pub fn downstream(&self, i: usize) -> Vec<usize> {
        let mut dfs = Dfs::new(&self.graph, NodeIndex::new(i));
        let mut out = Vec::new();
        while let Some(n) = dfs.next(&self.graph) {
            if n.index() != i {
                out.push(n.index());
            }
        }
        out.sort_unstable();
        out
    }

    /// How many steps are downstream of nothing, i.e. the roots.
    pub fn roots(&self) -> Vec<usize> {
        (0..self.len()).filter(|i| self.needs(*i).next().is_none()).collect()
    }
}

/// Finds one cycle among `edges` (from -> to) and returns it as the step
/// names along it, first name repeated at the end: `a -> b -> a`.
pub fn find_cycle<'a>(names: &[&'a str], edges: &[(&'a str, &'a str)]) -> Option<Vec<&'a str>> {
    let dag = Dag::from_edges(names, edges.iter().copied());
    let graph = &dag.graph;
    for scc in petgraph::algo::tarjan_scc(graph) {
        let first = scc[0];
        let self_loop = graph.contains_edge(first, first);
        if scc.len() == 1 && !self_loop {
            continue;
        }
        // Walk inside the component from the node that comes first in the
        // file until we come back to it: that is the cycle to show.
        let start = *scc.iter().min_by_key(|n| n.index()).unwrap_or(&first);
        let mut path = vec![start];
        let mut current = start;
        loop {
            let next =
                graph.neighbors_directed(current, Direction::Outgoing).filter(|n| scc.contains(n)).min_by_key(|n| {
                    // Prefer closing the cycle, then nodes not yet visited.
                    (*n != start, path.contains(n), n.index())
                })?;
            if next == start {
                path.push(start);
                return Some(path.into_iter().map(|n| names[n.index()]).collect());
            }
            if path.contains(&next) {
                // Already walked through here: cut the path to the loop.
                let at = path.iter().position(|n| *n == next).unwrap_or(0);
                let mut cycle: Vec<_> = path[at..].iter().map(|n| names[n.index()]).collect();
                cycle.push(names[next.index()]);
                return Some(cycle);
            }
            path.push(next);
            current = next;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cycle_in_file_order() {
        let names = ["a", "b", "c", "d"];
        let edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")];
        assert_eq!(find_cycle(&names, &edges), Some(vec!["a", "b", "c", "a"]));
        assert_eq!(find_cycle(&names, &[("a", "a")]), Some(vec!["a", "a"]));
        assert_eq!(find_cycle(&names, &[("a", "b"), ("b", "c")]), None);
    }

    #[test]
    fn upstream_and_downstream_are_transitive() {
        let names = ["a", "b", "c", "d"];
        let dag = Dag::from_edges(&names, [("a", "b"), ("b", "c"), ("a", "d")].into_iter());
        assert_eq!(dag.upstream(2), vec![0, 1]);
        assert_eq!(dag.downstream(0), vec![1, 2, 3]);
        assert_eq!(dag.roots(), vec![0]);
    }
}
