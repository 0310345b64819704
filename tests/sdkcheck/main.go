// knit-clb-sdkcheck reads "Action<TAB>JSON" lines (request bodies the fake
// CLB received from knit) and decodes each into the official Tencent Cloud
// SDK's request type for the action. A body fails when the SDK refuses one of
// its keys, or when encoding the typed request again does not give the body
// back: a misspelt nested key or a wrong type is lost on the way. It prints
// one line per failure and a summary, and exits 1 when any failed or when an
// action is unknown to it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	clb "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/clb/v20180317"
)

type request interface {
	FromJsonString(string) error
	ToJsonString() string
}

func typed(action string) request {
	switch action {
	case "DescribeLoadBalancers":
		return clb.NewDescribeLoadBalancersRequest()
	case "DescribeListeners":
		return clb.NewDescribeListenersRequest()
	case "CreateListener":
		return clb.NewCreateListenerRequest()
	case "ModifyListener":
		return clb.NewModifyListenerRequest()
	case "DeleteListener":
		return clb.NewDeleteListenerRequest()
	case "DeleteLoadBalancerListeners":
		return clb.NewDeleteLoadBalancerListenersRequest()
	case "DescribeTargets":
		return clb.NewDescribeTargetsRequest()
	case "RegisterTargets":
		return clb.NewRegisterTargetsRequest()
	case "DeregisterTargets":
		return clb.NewDeregisterTargetsRequest()
	case "BatchRegisterTargets":
		return clb.NewBatchRegisterTargetsRequest()
	case "BatchDeregisterTargets":
		return clb.NewBatchDeregisterTargetsRequest()
	case "DescribeTaskStatus":
		return clb.NewDescribeTaskStatusRequest()
	case "CreateLoadBalancer":
		return clb.NewCreateLoadBalancerRequest()
	case "DeleteLoadBalancer":
		return clb.NewDeleteLoadBalancerRequest()
	}
	return nil
}

func main() {
	checked := map[string]int{}
	failed := 0
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<24)
	for lines.Scan() {
		action, body, ok := strings.Cut(lines.Text(), "\t")
		if !ok {
			continue
		}
		req := typed(action)
		if req == nil {
			fmt.Printf("%s: no SDK request type known here\n", action)
			failed++
			continue
		}
		checked[action]++
		if err := req.FromJsonString(body); err != nil {
			fmt.Printf("%s: the SDK refuses %s: %v\n", action, body, err)
			failed++
			continue
		}
		var sent, again any
		if json.Unmarshal([]byte(body), &sent) != nil ||
			json.Unmarshal([]byte(req.ToJsonString()), &again) != nil ||
			!reflect.DeepEqual(sent, again) {
			fmt.Printf("%s: %s reads back as %s\n", action, body, req.ToJsonString())
			failed++
		}
	}
	actions := make([]string, 0, len(checked))
	for action, n := range checked {
		actions = append(actions, fmt.Sprintf("%s=%d", action, n))
	}
	sort.Strings(actions)
	fmt.Printf("checked %s; %d failed\n", strings.Join(actions, " "), failed)
	if failed > 0 {
		os.Exit(1)
	}
}
