import { render } from "preact";
import { App } from "./components/App";
import { SearchBox } from "./components/SearchBox";
import { slots } from "./slots";
import "./styles.css";

slots.headerSearch.push(SearchBox);

render(<App />, document.getElementById("app")!);
